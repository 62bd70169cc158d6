"""Run chemtag's input-fuzzing properties (tests/test_fuzz.py) with many generated cases.

    .venv/bin/python scripts/fuzz.py --examples 1200 > fuzz.log 2>&1

Each property runs ``--examples`` generated cases (the default 1200 makes about 11,000 in all, 3 to 8
minutes on one core). Prints, per property, the cases run and their outcomes (``ok``, or the kind of
message that refused the input), then the totals. Exits with 1 when a property fails: hypothesis shrinks
the failing input and prints it with a ``@reproduce_failure`` line for the test.
"""

from __future__ import annotations

import argparse
import faulthandler
import inspect
import logging
import os
import sys
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1200, help="generated cases per property (default 1200)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, fastest for tiny models)")
    parser.add_argument("-k", dest="select", default="", help="run only properties whose name contains this")
    args = parser.parse_args(argv)

    os.environ["CHEMTAG_FUZZ_EXAMPLES"] = str(args.examples)  # read by test_fuzz on import
    sys.path.insert(0, str(TESTS))
    faulthandler.enable()  # a crash in native code prints every thread's stack
    import torch
    import test_fuzz

    torch.set_num_threads(args.threads)
    logging.getLogger("chemtag").setLevel(logging.ERROR)  # not a line per case with NaN rows
    properties = {name: test for name, test in vars(test_fuzz).items()
                  if name.startswith("test_") and hasattr(test, "hypothesis") and args.select in name}
    models = test_fuzz.fitted_models()
    failed = []
    started = time.perf_counter()
    for name, test in properties.items():
        before = sum(test_fuzz.OUTCOMES.values())
        property_started = time.perf_counter()
        try:
            test(**({"models": models} if "models" in inspect.signature(test).parameters else {}))
        except Exception:  # noqa: BLE001 -- report every failing property, then exit non-zero
            traceback.print_exc()
            failed.append(name)
        cases = sum(test_fuzz.OUTCOMES.values()) - before
        status = "FAILED" if name in failed else "passed"
        print(f"{name}: {status}, {cases} cases in {time.perf_counter() - property_started:.0f}s", flush=True)

    print(f"\n{sum(test_fuzz.OUTCOMES.values())} cases in {time.perf_counter() - started:.0f}s; "
          f"{len(failed)} of {len(properties)} properties failed {failed or ''}")
    for (label, outcome), count in sorted(test_fuzz.OUTCOMES.items()):
        print(f"  {label:<24} {outcome:<20} {count:>6}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
