"""Train/test splits that keep every test row, and for synergy every test drug pair, out of training.

A :class:`Split` holds row positions. Methods are fitted on the training rows only and choose
anything they tune (early stopping, ridge penalty) from those rows; the test rows are seen once, at
prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

DAVIS_TRAIN_FOLDS = ("0", "1", "2", "3", "4")
DAVIS_TEST_FOLD = "test"


@dataclass(frozen=True)
class Split:
    """Row positions ``(n_train,)`` and ``(n_test,)`` of one table, sorted and disjoint."""

    train: np.ndarray
    test: np.ndarray

    def __post_init__(self):
        overlap = np.intersect1d(self.train, self.test)
        if len(overlap):
            raise ValueError(f"{len(overlap)} rows are in both train and test, e.g. {overlap[:5].tolist()}.")


def davis_setting1(folds: pd.Series) -> Split:
    """DeepDTA's setting 1 on Davis: train on folds 0-4, test on the ``test`` fold."""
    folds = folds.astype(str)
    return Split(np.flatnonzero(folds.isin(DAVIS_TRAIN_FOLDS)), np.flatnonzero(folds == DAVIS_TEST_FOLD))


def unordered_pairs(first: Sequence[str], second: Sequence[str]) -> np.ndarray:
    """One key per row for the drug pair in either order: ``"a|b"`` with ``a <= b``."""
    return np.asarray(["|".join(sorted(pair)) for pair in zip(map(str, first), map(str, second))])


def pair_folds(first: Sequence[str], second: Sequence[str], n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold number ``(n,)`` of each row; all rows of an unordered drug pair share one fold."""
    groups = unordered_pairs(first, second)
    folds = np.empty(len(groups), dtype=np.int64)
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(groups, groups=groups)):
        folds[test] = fold
    return folds


def pair_split(first: Sequence[str], second: Sequence[str], fold: int = 0, n_folds: int = 5, seed: int = 0) -> Split:
    """Fold ``fold`` of :func:`pair_folds` as the test set, the other folds as training."""
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1}, got {fold}.")
    folds = pair_folds(first, second, n_folds, seed)
    return Split(np.flatnonzero(folds != fold), np.flatnonzero(folds == fold))


def random_split(n_rows: int, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """A seeded random split of ``n_rows`` rows, ``test_fraction`` of them for testing."""
    order = np.random.default_rng(seed).permutation(n_rows)
    n_test = int(round(n_rows * test_fraction))
    if not 0 < n_test < n_rows:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty side with {n_rows} rows.")
    return Split(np.sort(order[n_test:]), np.sort(order[:n_test]))


def subsample(split: Split, n_train: int | None, n_test: int | None, seed: int = 0) -> Split:
    """A seeded random subset of each side (``None`` keeps a side whole); never moves a row across."""
    rng = np.random.default_rng(seed)

    def take(rows: np.ndarray, n: int | None) -> np.ndarray:
        return rows if n is None or n >= len(rows) else np.sort(rng.choice(rows, size=n, replace=False))

    return Split(take(split.train, n_train), take(split.test, n_test))
