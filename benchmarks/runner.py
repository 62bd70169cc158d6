"""Run methods on one task's split and write the results, the table and the plots."""

from __future__ import annotations

import datetime
import gc
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from chemtag.backbones import DEFAULT_BACKBONE

from benchmarks import report
from benchmarks.methods import METHODS, Context, Method
from benchmarks.metrics import Scoring
from benchmarks.splits import subsample
from benchmarks.tasks import BUDGETS, DATA_DIR, Budget, Rows, Task, crop_proteins

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
IMG_DIR = ROOT / "docs" / "img"
BACKBONE_ENV_VAR = "CHEMTAG_BENCH_BACKBONE"


@dataclass(frozen=True)
class Data:
    """A task's training and test rows (inputs only) and their targets."""

    X_train: pd.DataFrame
    y_train: np.ndarray
    X_test: pd.DataFrame
    y_test: np.ndarray


def load_data(task: Task, rows: Rows, fold: int = 0, seed: int = 0, data_dir: Path = DATA_DIR) -> Data:
    """Read, split, subsample and label ``task``'s data; inputs keep only the task's input columns."""
    if not 0 <= fold < task.n_folds:
        raise ValueError(f"Task {task.name} has {task.n_folds} fold(s); got fold {fold}.")
    try:
        frame = task.read(data_dir)
    except FileNotFoundError as error:
        if error.filename is None:  # a reader's own message: the TDC tasks say how to get their files
            raise
        raise FileNotFoundError(f"Task {task.name} reads {error.filename}, which does not exist; pass the folder "
                                f"that holds its data as data_dir (--data-dir).") from error
    split = subsample(task.split(frame, fold, seed), rows.n_train, rows.n_test, seed)
    parts = []
    for positions in (split.train, split.test):
        part = crop_proteins(frame.iloc[positions].reset_index(drop=True), task.columns("protein"), rows.max_residues)
        parts += [part[list(task.inputs)], task.label(part)]
    return Data(*parts)


def machine() -> str:
    """CPU model and core count, and the GPU if torch sees one."""
    model = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{model}, {os.cpu_count()} cores, {gpu}"


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished child processes."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def resolve_methods(task: Task, methods: Sequence[str | Method] | None) -> list[Method]:
    """The named methods (when None, every method but chemtag's variants), skipping those that do not apply
    to ``task``."""
    if methods is None:
        methods = [m for m in METHODS.values() if not m.variant]
    chosen = [METHODS[m] if isinstance(m, str) else m for m in methods]
    return [m for m in chosen if m.applies_to(task)]


def results_stem(task: Task, budget: Budget, rows: Rows) -> str:
    """File name stem of a run: ``{task}-{budget}``, plus ``-{n_train}x{n_test}`` for row counts other than the
    budget's and ``-{max_residues}res`` (``-whole-proteins``) for another protein crop."""
    default = task.rows(budget.name)
    stem = f"{task.name}-{budget.name}"
    if (rows.n_train, rows.n_test) != (default.n_train, default.n_test):
        stem += f"-{rows.n_train or 'all'}x{rows.n_test or 'all'}"
    if rows.max_residues != default.max_residues:
        stem += f"-{rows.max_residues}res" if rows.max_residues else "-whole-proteins"
    return stem


def evaluate(task: Task, scoring: Scoring, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {name: scoring.metrics[name](y_true, y_pred) for name in task.metrics}


def run(task: Task, budget: Budget, methods: Sequence[str | Method] | None = None, *, rows: Rows | None = None,
        fold: int = 0, seed: int = 0, backbone: str | None = None, device: str = "cpu", data_dir: Path = DATA_DIR,
        results_dir: Path = RESULTS_DIR, img_dir: Path = IMG_DIR, chemtag_params: dict | None = None,
        log=print) -> pd.DataFrame:
    """Fit every method on the same training rows, score it on the test rows, write the outputs.

    ``rows`` replaces the budget's rows of ``task``; ``device`` is where chemtag's estimators run (the
    other methods run on the CPU); ``chemtag_params`` are estimator parameters every chemtag method sets.
    Writes ``{stem}.csv`` (one row per method and metric), ``{stem}-predictions.csv``, ``{stem}-history.csv``
    and ``{stem}.md`` under ``results_dir`` after each method (an interrupted run keeps the methods that
    ended), with the stem of :func:`results_stem`, and draws ``{stem}-scatter.png`` and ``{stem}-curves.png``
    under ``img_dir`` once the run ends or is interrupted (``python -m benchmarks report`` draws them from
    the files at any time).
    Returns this run's result rows.
    """
    rows = rows or task.rows(budget.name)
    backbone = backbone or os.environ.get(BACKBONE_ENV_VAR) or DEFAULT_BACKBONE
    data = load_data(task, rows, fold, seed, data_dir)
    scoring = task.scoring()
    context = Context(task, budget, rows, seed, backbone, data_dir, device, chemtag_params or {})
    stamp = {"task": task.name, "budget": budget.name, "seed": seed, "fold": fold, "backbone": backbone,
             "device": device,
             "n_train": len(data.y_train), "n_test": len(data.y_test),
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
             "source": scoring.source}
    log(f"{task.name} ({budget.name}, {scoring.source}): {stamp['n_train']} train / {stamp['n_test']} test rows"
        + (f"; chemtag's parameters {chemtag_params}" if chemtag_params else ""))
    stem, results = results_stem(task, budget, rows), []
    try:
        for method in resolve_methods(task, methods):
            if method.missing():
                log(f"  {method.name}: skipped, needs {', '.join(method.missing())}")
                continue
            model = method.build(context)
            load, cpu_started, started = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
            model.fit(data.X_train, data.y_train)
            fitted = time.perf_counter()
            y_pred = np.asarray(model.predict(data.X_test), dtype=float)
            timing = {"fit_seconds": fitted - started, "predict_seconds": time.perf_counter() - fitted,
                      "cpu_seconds": cpu_seconds() - cpu_started, "load_average": load}
            scores = evaluate(task, scoring, data.y_test, y_pred)
            estimator = type(model.steps[-1][1] if hasattr(model, "steps") else model).__name__
            scored = pd.DataFrame([stamp | timing | {"method": method.name, "metric": k, "value": v,
                                                     "estimator": estimator} for k, v in scores.items()],
                                  columns=report.RESULT_COLUMNS)
            history = pd.DataFrame(getattr(model, "history_", []), columns=["epoch", "train_loss", "valid_loss"])
            # each method's outputs as it ends: a run interrupted later keeps them
            write_outputs(stem, scored, pd.DataFrame({"method": method.name, "y_true": data.y_test, "y_pred": y_pred}),
                          history.assign(method=method.name), results_dir)
            results.append(scored)
            log(f"  {method.name}: fit {timing['fit_seconds']:.1f}s, predict {timing['predict_seconds']:.1f}s, "
                f"CPU {timing['cpu_seconds']:.0f}s, "
                + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
            del model
            gc.collect()
    finally:
        if results:
            draw_plots(stem, results_dir, img_dir)
    return pd.concat(results, ignore_index=True) if results else pd.DataFrame(columns=report.RESULT_COLUMNS)


def write_outputs(stem: str, results: pd.DataFrame, predictions: pd.DataFrame, history: pd.DataFrame,
                  results_dir: Path) -> None:
    """Merge one method's scores, test predictions and per-epoch losses into the files of ``stem`` and rewrite
    its markdown table."""
    report.merge_into(results_dir / f"{stem}.csv", results, ["method", "metric"])
    report.merge_into(results_dir / f"{stem}-predictions.csv", predictions, ["method"])
    report.merge_into(results_dir / f"{stem}-history.csv", history, ["method"])
    write_table(stem, results_dir)


def write_table(stem: str, results_dir: Path = RESULTS_DIR) -> None:
    """The markdown table of ``stem`` from its results CSV."""
    (results_dir / f"{stem}.md").write_text(report.markdown_table(pd.read_csv(results_dir / f"{stem}.csv")))


def draw_plots(stem: str, results_dir: Path = RESULTS_DIR, img_dir: Path = IMG_DIR) -> None:
    """The scatter plot and the learning curves of ``stem`` from its prediction and history CSVs."""
    predictions = pd.read_csv(results_dir / f"{stem}-predictions.csv")
    history = pd.read_csv(results_dir / f"{stem}-history.csv")
    title = f"{stem}: {len(predictions) // predictions['method'].nunique()} test rows"
    report.scatter_plot(predictions, img_dir / f"{stem}-scatter.png", title)
    report.learning_curves(history.dropna(subset=["train_loss"]), img_dir / f"{stem}-curves.png", title)


def redraw(stem: str, results_dir: Path = RESULTS_DIR, img_dir: Path = IMG_DIR) -> None:
    """The markdown table and the plots of ``stem`` from its CSV files."""
    write_table(stem, results_dir)
    draw_plots(stem, results_dir, img_dir)


def run_many(tasks: Sequence[Task], budget: str | Budget = "quick", n_train: int | None = None,
             n_test: int | None = None, max_residues: int | None = None, **options) -> pd.DataFrame:
    """:func:`run` on each task in turn, with the budget's row counts and protein crop replaced where given
    (``max_residues=0`` keeps proteins whole); the result rows."""
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    results = []
    for task in tasks:
        rows = task.rows(budget.name)
        crop = rows.max_residues if max_residues is None else max_residues or None
        rows = replace(rows, n_train=n_train or rows.n_train, n_test=n_test or rows.n_test, max_residues=crop)
        results.append(run(task, budget, rows=rows, **options))
    return pd.concat(results, ignore_index=True)
