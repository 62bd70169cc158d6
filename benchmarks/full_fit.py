"""One full-budget fit of a task's chemtag preset, resumable: train on the task's split, report its test rows.

The task's split at the full budget (``ba-davis``: DeepDTA's setting 1, the 25,046 pairs of folds 0-4
train and the 5,010 pairs of the ``test`` fold are predicted; ``dc-oneil``: the triples of the drug pairs
outside ``--fold``), with proteins whole; 10% of the training rows are held out for early stopping, and
the test rows are predicted once, at the end. The fit checkpoints every epoch into ``--checkpoint-dir``;
run the same command again after it was killed and it resumes after the last finished epoch. Every run of
the command is a *segment*, appended to ``<checkpoint-dir>/segments.json`` with its wall time, so the
result sums the whole fit's wall time over restarts: the work each run kept (a killed run counts until
its last checkpoint; each restart recomputes the prefix cache, which is in its segment's time). A run
stopped by Ctrl-C writes no result. Resume with the code that started the fit (each segment records its
commit): a checkpoint of a fit whose fingerprint the code computes differently is refused.

    .venv/bin/python -m benchmarks.full_fit --task ba-davis --checkpoint-dir ~/davis-fit \\
        --out benchmarks/results/ba-davis-full-fit.json

Writes JSON: the command, machine, settings, every epoch's losses and seconds, the segments, and the
test metrics of chemtag (the task's: MSE, concordance index, Pearson, Spearman on Davis), of the mean
predictor and of the ``--baselines`` (benchmark methods such as ``gbm``, fitted after chemtag on the same
rows, in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from benchmarks.methods import METHODS, Context
from benchmarks.runner import evaluate, load_data, machine
from benchmarks.tasks import BUDGETS, DATA_DIR, TASKS, Rows
from chemtag.backbones import DEFAULT_BACKBONE
from chemtag.checkpoint import latest_checkpoint, saved_progress
from chemtag.kernel_head import DEFAULT_LANDMARKS

SEGMENTS_FILE = "segments.json"


def last_saved(checkpoint_dir: Path) -> tuple[int, float, bool] | None:
    """The newest checkpoint's epoch, modification time and whether its fit is complete, if there is one."""
    folder = latest_checkpoint(checkpoint_dir)
    if folder is None:
        return None
    epoch, complete = saved_progress(folder)
    return epoch, folder.stat().st_mtime, complete


def read_segments(checkpoint_dir: Path) -> list[dict]:
    """The earlier runs' segments. One that was killed (no ``seconds``) is closed at the last checkpoint it
    wrote: its epochs are those up to that checkpoint, its ``seconds`` the wall time until then (the work
    after it was lost and is redone by the next segment, so it is not counted)."""
    path = checkpoint_dir / SEGMENTS_FILE
    segments = json.loads(path.read_text()) if path.is_file() else []
    latest = last_saved(checkpoint_dir)
    for segment in segments:
        if segment["seconds"] is None:
            epoch, written, _ = latest or (segment.get("resumed_after"), segment["start_time"], None)
            segment |= {"killed": True, "seconds": max(written - segment["start_time"], 0.0), "last_epoch": epoch}
    return segments


def write_segments(checkpoint_dir: Path, segments: list[dict]) -> None:
    path = checkpoint_dir / SEGMENTS_FILE
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(segments, indent=1))
    partial.replace(path)


def commit() -> str | None:
    """The checked-out commit of this code (``-dirty`` with uncommitted changes), if it is a git checkout."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if git("status", "--porcelain", "--untracked-files=no").stdout else "")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--fold", type=int, default=0, help="test fold of tasks with folds (dc-oneil: 0-4)")
    parser.add_argument("--checkpoint-dir", type=Path, required=True,
                        help="where the fit checkpoints each epoch; the same folder resumes it")
    parser.add_argument("--out", type=Path, help="JSON results, written when the fit has finished")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--n-train", type=int, help="seeded subset of the training rows (default: all)")
    parser.add_argument("--n-test", type=int, help="seeded subset of the test rows (default: all)")
    parser.add_argument("--head", choices=("linear", "kernel"), default="linear", help="the estimator's head")
    parser.add_argument("--kernel-landmarks", type=int, default=DEFAULT_LANDMARKS,
                        help="with --head kernel: the landmark rows of its Nystrom fit")
    parser.add_argument("--baselines", type=lambda names: names.split(","), default=[],
                        help="comma-separated benchmark methods to fit and score beside chemtag, e.g. gbm")
    parser.add_argument("--max-epochs", type=int, default=20, help="0 fits the head alone to the untrained tags")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--fp32", action="store_true", help="float32 compute (default: bfloat16 autocast)")
    parser.add_argument("--memory-gib", type=float, default=2.0,
                        help="prefix-cache memory budget; the rest spills to a memory-mapped file")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if unknown := [name for name in args.baselines if name not in METHODS]:
        parser.error(f"unknown baselines {unknown}; choose among {sorted(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    task = TASKS[args.task]
    try:
        data = load_data(task, Rows(args.n_train, args.n_test), args.fold, args.seed, args.data_dir)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    segments = read_segments(args.checkpoint_dir)
    estimator = task.estimator(
        backbone=args.backbone, head=args.head, kernel_landmarks=args.kernel_landmarks, max_epochs=args.max_epochs,
        patience=args.patience, batch_size=args.batch_size, bf16=not args.fp32, protein_alphabet="extended",
        cache_memory_bytes=int(args.memory_gib * 2**30), checkpoint_dir=args.checkpoint_dir, random_state=args.seed,
        verbose=1)
    print(f"{task.name}: {len(data.y_train):,} training rows, {len(data.y_test):,} test rows; "
          f"segment {len(segments) + 1}", flush=True)

    started = time.perf_counter()
    latest = last_saved(args.checkpoint_dir)
    segment = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "start_time": time.time(),
               "threads": torch.get_num_threads(), "commit": commit(), "resumed_after": latest and latest[0],
               "seconds": None}
    if segments and segment["commit"] != segments[0].get("commit"):
        print(f"warning: this fit started at commit {segments[0].get('commit')}, this code is {segment['commit']}; "
              "a checkpoint whose fingerprint this code computes differently is refused", flush=True)
    write_segments(args.checkpoint_dir, segments + [segment])
    estimator.fit(data.X_train, data.y_train)
    fitted_at = time.perf_counter()
    resumed_after = -1 if segment["resumed_after"] is None else segment["resumed_after"]
    this_segment = [record for record in estimator.history_ if record["epoch"] > resumed_after]
    complete = last_saved(args.checkpoint_dir)[2]
    segment |= {"seconds": fitted_at - started, "load_average_15min": os.getloadavg()[2],
                "last_epoch": estimator.history_[-1]["epoch"], "interrupted": not complete,
                "epochs": [record["epoch"] for record in this_segment],
                "epoch_seconds": sum(record["seconds"] for record in this_segment)}
    write_segments(args.checkpoint_dir, segments := segments + [segment])
    if not complete:
        print("The fit was interrupted before it finished; run the same command again to resume it.", flush=True)
        return {"segments": segments, "history": estimator.history_}

    predictions = estimator.predict(data.X_test)
    predict_seconds = time.perf_counter() - fitted_at
    scoring = task.scoring()
    baselines, baseline_seconds = {}, {}
    context = Context(task, BUDGETS["full"], task.rows("full"), args.seed, args.backbone, args.data_dir)
    for name in args.baselines:
        baseline_started = time.perf_counter()
        model = METHODS[name].build(context).fit(data.X_train, data.y_train)
        baselines[name] = evaluate(task, scoring, data.y_test, model.predict(data.X_test))
        baseline_seconds[name] = time.perf_counter() - baseline_started
        print(f"{name}: {baselines[name]} in {baseline_seconds[name]:.0f}s", flush=True)
    epochs = [record for record in estimator.history_ if record["epoch"] > 0]  # epoch 0: the head's probe
    results = {
        "command": "python -m benchmarks.full_fit " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": date.today().isoformat(), "machine": machine(), "backbone": args.backbone,
        "settings": {"head": args.head, "kernel_landmarks": args.kernel_landmarks, "bf16": not args.fp32,
                     "batch_size": args.batch_size, "max_epochs": args.max_epochs, "patience": args.patience,
                     "memory_gib": args.memory_gib, "seed": args.seed},
        "task": task.name, "fold": args.fold, "n_train": len(data.y_train), "n_test": len(data.y_test),
        "history": estimator.history_,
        "segments": segments,
        "fit_seconds": sum(s["seconds"] for s in segments),
        "mean_epoch_seconds": float(np.mean([record["seconds"] for record in epochs])) if epochs else None,
        "epoch_0_seconds": estimator.history_[0]["seconds"],
        "predict_seconds": predict_seconds,
        "test": {"chemtag": evaluate(task, scoring, data.y_test, predictions),
                 "mean": evaluate(task, scoring, data.y_test, np.full(len(data.y_test), data.y_train.mean())),
                 **baselines},
        "baseline_seconds": baseline_seconds,
    }
    print(json.dumps(results["test"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
