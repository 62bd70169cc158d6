"""Time one ``QEDRegressor(head="kernel", max_epochs=0, bf16=True)`` fit of the chemtag checkout CHECKOUT.

    python scripts/kernel_fit_speed.py CHECKOUT N_TRAIN [--data-dir ../shared/data]

Fits on the first N_TRAIN SMILES of the MOSES sample (QED from RDKit), two torch threads, and prints the
fit's wall time and the test MSE on the next 200 SMILES. Run it for two checkouts in one shell command,
alternating, to compare their fit times.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="the chemtag checkout whose code is timed")
    parser.add_argument("n_train", type=int)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout.resolve()))
    import numpy as np
    import torch

    import chemtag
    from chemtag import QEDRegressor
    from chemtag.descriptors import qed

    torch.set_num_threads(2)
    with gzip.open(args.data_dir / "smiles_moses_100k.txt.gz", "rt") as handle:
        smiles = [next(handle).strip() for _ in range(args.n_train + 200)]
    train, test = smiles[:args.n_train], smiles[args.n_train:]
    model = QEDRegressor(head="kernel", max_epochs=0, bf16=True, verbose=0, random_state=0)
    started = time.perf_counter()
    model.fit(train, np.asarray(qed(train)))
    seconds = time.perf_counter() - started
    error = np.mean((model.predict(test) - np.asarray(qed(test))) ** 2)
    print(f"{Path(chemtag.__file__).parents[1]}: fit {seconds:.1f}s, test MSE {error:.6f}", flush=True)


if __name__ == "__main__":
    main()
