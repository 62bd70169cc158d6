"""Regression metrics of the benchmark tasks, each ``(y_true (n,), y_pred (n,)) -> float``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from scipy import stats

Metric = Callable[[np.ndarray, np.ndarray], float]


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean((np.asarray(y_true) - np.asarray(y_pred)) ** 2))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(mse(y_true, y_pred)))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true) - np.asarray(y_pred))))


def pearson(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Pearson's r; NaN when either side is constant (e.g. the mean predictor)."""
    if np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return float("nan")
    return float(stats.pearsonr(y_true, y_pred).statistic)


def spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Spearman's rho; NaN when either side is constant."""
    if np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return float("nan")
    return float(stats.spearmanr(y_true, y_pred).statistic)


def concordance_index(y_true: np.ndarray, y_pred: np.ndarray, block: int = 1024) -> float:
    """Share of pairs with ``y_true[i] > y_true[j]`` that the predictions order the same way, ties
    counting one half (the CI of DeepDTA and GraphDTA). Exact, ``O(n^2)`` in blocks of rows."""
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    concordant, comparable = 0.0, 0
    for start in range(0, len(y_true), block):
        ordered = y_true[start:start + block, None] > y_true[None, :]
        difference = y_pred[start:start + block, None] - y_pred[None, :]
        concordant += ((difference > 0) & ordered).sum() + 0.5 * ((difference == 0) & ordered).sum()
        comparable += ordered.sum()
    return float(concordant / comparable) if comparable else float("nan")


METRICS: dict[str, Metric] = {
    "mse": mse, "rmse": rmse, "mae": mae, "pearson": pearson, "spearman": spearman, "ci": concordance_index,
}
LOWER_IS_BETTER = frozenset({"mse", "rmse", "mae"})


@dataclass(frozen=True)
class Scoring:
    """A run's metric functions by name, and ``source``: where its rows and metrics come from, recorded
    with each result (``"suite"``: this suite's readers and metrics)."""

    metrics: Mapping[str, Metric]
    source: str


def suite_scoring() -> Scoring:
    return Scoring(METRICS, "suite")
