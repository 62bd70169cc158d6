"""Results on disk: CSV files, a markdown table, predicted-vs-true scatter plots and learning curves.

A run of some methods replaces those methods' earlier rows for the same task and budget and keeps the
others, so methods can be run one at a time into one table.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.metrics import LOWER_IS_BETTER

# cpu_seconds: the process's CPU time over fit and predict (all threads), which other jobs on the machine
# inflate less than wall time; load_average: the machine's 1-minute load when the method started.
# device: where chemtag's estimators ran (the other methods run on the CPU).
# source: where the rows and metrics came from ("suite"; for TDC groups "pytdc-{version}" or "tdc-files").
RESULT_COLUMNS = ["task", "method", "metric", "value", "fit_seconds", "predict_seconds", "cpu_seconds", "n_train",
                  "n_test", "budget", "seed", "fold", "backbone", "device", "estimator", "date", "machine",
                  "load_average", "source"]


def merge_into(path: Path, new: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Write ``new`` into the CSV at ``path``, replacing earlier rows that share its values of ``key``."""
    if path.is_file():
        old = pd.read_csv(path)
        replaced = old.set_index(key).index.isin(new.set_index(key).index)
        new = pd.concat([old[~replaced], new], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(path, index=False)
    return new


def markdown_table(results: pd.DataFrame) -> str:
    """One row per method: each metric (best in bold), fit and predict wall seconds, CPU seconds, rows used."""
    metrics, methods = (list(dict.fromkeys(results[column])) for column in ("metric", "method"))
    wide = results.set_index(["method", "metric"])["value"].unstack().reindex(index=methods, columns=metrics)
    timing = results.groupby("method", sort=False)[["fit_seconds", "predict_seconds", "cpu_seconds", "n_train",
                                                     "n_test"]].first()
    best = {m: (wide[m].min() if m in LOWER_IS_BETTER else wide[m].max()) for m in metrics}
    header = ["method", *metrics, "fit s", "predict s", "CPU s", "train / test rows"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in wide.iterrows():
        cells = [method] + [_number(row[m], bold=row[m] == best[m]) for m in metrics]
        t = timing.loc[method]
        cells += [f"{t.fit_seconds:.1f}", f"{t.predict_seconds:.1f}", f"{t.cpu_seconds:.0f}",
                  f"{int(t.n_train):,} / {int(t.n_test):,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float, bold: bool) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "—"
    text = f"{value:.4g}"
    return f"**{text}**" if bold else text


def scatter_plot(predictions: pd.DataFrame, path: Path, title: str) -> Path:
    """Predicted vs true, one panel per method, with the identity line; saved as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    methods = list(dict.fromkeys(predictions["method"]))
    columns = min(4, len(methods))
    rows = math.ceil(len(methods) / columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    low, high = np.nanpercentile(predictions[["y_true", "y_pred"]].to_numpy(), [0.5, 99.5])
    for axis, method in zip(axes.flat, methods):
        rows_of = predictions[predictions["method"] == method]
        axis.scatter(rows_of["y_true"], rows_of["y_pred"], s=6, alpha=0.5, linewidths=0)
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        axis.set(title=method, xlim=(low, high), ylim=(low, high), xlabel="true", ylabel="predicted")
    for axis in list(axes.flat)[len(methods):]:
        axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def learning_curves(history: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Training and validation loss (MSE on standardised targets) per epoch of the iterative methods."""
    if history.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(6, 4))
    colors = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for method, color in zip(dict.fromkeys(history["method"]), colors * 3):
        rows = history[history["method"] == method]
        axis.plot(rows["epoch"], rows["train_loss"], color=color, marker="o", markersize=3, label=f"{method} train")
        if rows["valid_loss"].notna().any():
            axis.plot(rows["epoch"], rows["valid_loss"], color=color, marker="o", markersize=3, linestyle="--",
                      label=f"{method} valid")
    axis.set(xlabel="epoch", ylabel="MSE (standardised target)", yscale="log", title=title)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    from matplotlib import pyplot

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path
