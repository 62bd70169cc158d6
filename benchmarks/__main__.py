"""Command line: ``python -m benchmarks run --task TASK --budget quick|full [--methods a,b]``, ``list``, ``report``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks.generation_tasks import GENERATION_TASKS
from benchmarks.methods import METHODS
from benchmarks.runner import BACKBONE_ENV_VAR, IMG_DIR, RESULTS_DIR, redraw, run_many
from benchmarks.tasks import BUDGETS, DATA_DIR, QUICK_PROTEIN_CROP, TASKS, TDC_TASKS


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = main.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run methods on tasks and write results, tables and plots")
    run.add_argument("--task", action="append", required=True, choices=[*TASKS, *GENERATION_TASKS, "all"],
                     help="task to run (repeat for several; 'all' for every regression task but the tdc-* "
                          "ones, which need TDC's files)")
    run.add_argument("--budget", choices=list(BUDGETS), default="quick")
    run.add_argument("--methods", help="comma-separated subset of: "
                     + ", ".join(f"{name}*" if method.variant else name for name, method in METHODS.items())
                     + " (default: all but chemtag's variants, marked *; 'all' for every method); "
                     + "; ".join(f"for {t.name}: {', '.join(t.methods)} (default: all)"
                                 for t in GENERATION_TASKS.values()))
    run.add_argument("--fold", type=int, default=0, help="test fold of tasks with folds (dc-oneil: 0-4)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--n-train", type=int, help="training rows to draw (default: the budget's); "
                     "results then go to files named {task}-{budget}-{n_train}x{n_test}")
    run.add_argument("--n-test", type=int, help="test rows to draw (default: the budget's)")
    run.add_argument("--max-residues", type=int, help="residues kept of each protein (default: the budget's, "
                     f"{QUICK_PROTEIN_CROP} in quick, all in full; 0 keeps proteins whole); the file names then "
                     "end in -{max_residues}res or -whole-proteins")
    run.add_argument("--backbone", help=f"chemtag's backbone (default: ${BACKBONE_ENV_VAR} or smollm2-135m)")
    run.add_argument("--device", default="cpu",
                     help="where chemtag's estimators run, e.g. 'cuda' (default: cpu); the other methods use the CPU")
    run.add_argument("--data-dir", type=Path, default=DATA_DIR,
                     help="data folder (default: ../shared/data); the tdc-* tasks read TDC's layout under it, "
                          "{group}/{benchmark}/train_val|test, as PyTDC's path argument")
    run.add_argument("--chemtag-params", type=json.loads, default=None, metavar="JSON",
                     help='estimator parameters every chemtag method sets, e.g. \'{"pool_layers": [1, 2, 1.0]}\' '
                          "(name the results or img folder apart: the file names do not show them)")
    run.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    run.add_argument("--img-dir", type=Path, default=IMG_DIR)
    commands.add_parser("list", help="list tasks, budgets and methods")
    redraw = commands.add_parser("report", help="redraw every table and plot from the result CSV files")
    redraw.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    redraw.add_argument("--img-dir", type=Path, default=IMG_DIR)
    return main


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    if arguments.command == "list":
        for task in TASKS.values():
            print(f"task {task.name}: {task.description}; metrics {', '.join(task.metrics)}")
        for task in GENERATION_TASKS.values():
            print(f"task {task.name}: {task.description}; metrics {', '.join(task.metrics)}; "
                  f"methods {', '.join(task.methods)}")
        for budget in BUDGETS.values():
            print(f"budget {budget}")
        for method in METHODS.values():
            variant = " (a variant of chemtag: runs when named)" if method.variant else ""
            print(f"method {method.name}: {method.description}{variant}")
        return 0
    if arguments.command == "report":
        for table in sorted(arguments.results_dir.glob("*-history.csv")):
            redraw(table.name.removesuffix("-history.csv"), arguments.results_dir, arguments.img_dir)
            print(f"redrew {table.name.removesuffix('-history.csv')}")
        return 0
    methods = arguments.methods.split(",") if arguments.methods and arguments.methods != "all" else None
    regression_methods = list(METHODS) if arguments.methods == "all" else methods
    every = [name for name in TASKS if name not in TDC_TASKS]
    names = every if "all" in arguments.task else list(dict.fromkeys(arguments.task))
    regression = [TASKS[name] for name in names if name in TASKS]
    generation = [GENERATION_TASKS[name] for name in names if name in GENERATION_TASKS]
    for known in ([METHODS] if regression else []) + [task.methods for task in generation]:
        unknown = set(methods or ()) - set(known)
        if unknown:
            raise SystemExit(f"Unknown methods {sorted(unknown)}; choose from {', '.join(known)}.")
    started = time.perf_counter()
    if regression:
        run_many(regression, arguments.budget, arguments.n_train, arguments.n_test, arguments.max_residues,
                 methods=regression_methods, fold=arguments.fold,
                 seed=arguments.seed, backbone=arguments.backbone, device=arguments.device,
                 data_dir=arguments.data_dir, chemtag_params=arguments.chemtag_params,
                 results_dir=arguments.results_dir, img_dir=arguments.img_dir)
    for task in generation:  # --n-train: pairs per trained direction, --n-test: test molecules per direction
        task.run(arguments.budget, arguments.results_dir, n_train=arguments.n_train, n_test=arguments.n_test,
                 methods=methods, seed=arguments.seed, data_dir=arguments.data_dir,
                 backbone=arguments.backbone or os.environ.get(BACKBONE_ENV_VAR))
    print(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
