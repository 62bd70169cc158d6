"""TDC benchmark groups read from TDC's cache layout, through PyTDC where it is installed.

PyTDC keeps a benchmark of a group under ``{path}/{group}/{benchmark}/`` as ``train_val.{csv|pkl}`` and
``test.{csv|pkl}`` (``dti_dg_group`` stores CSV, ``drugcombo_group`` pickles); ``path`` is the folder
given to its group classes, here the runner's ``--data-dir``. Where PyTDC imports, the rows come from
its group API (``group.get(name)``, which downloads the whole group when its folder is absent) and the
group's metric from ``tdc.Evaluator``; where it does not, the same files are read with pandas and every
metric comes from :mod:`benchmarks.metrics`. The run records which with its results (``source``).

Training rows are TDC's whole ``train_val`` and test rows its ``test``: every method chooses what it
tunes from a share of its training rows, in place of ``get_train_valid_split``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.metrics import METRICS, Scoring
from benchmarks.splits import Split

PARTS = ("train_val", "test")  # PyTDC's file stems, in the order the rows are stacked
PART_COLUMN = "tdc_part"       # which of PARTS a row came from
FILES_SOURCE = "tdc-files"     # ``source`` of a run that read the files without PyTDC
INSTALL_HINT = "`make tdc` installs PyTDC 1.1.15 without downgrading numpy or transformers"


@dataclass(frozen=True)
class TdcBenchmark:
    """One benchmark of a TDC group, named as PyTDC names it on disk.

    ``file_format``: ``"csv"`` or ``"pkl"``; ``tdc_metric``: the group's metric as ``tdc.Evaluator``
    names it, which replaces this suite's ``metric`` when PyTDC is installed.
    """

    group: str
    name: str
    file_format: str
    tdc_metric: str
    metric: str

    def files(self, root: Path) -> dict[str, Path]:
        """The files PyTDC reads under ``root``, by part."""
        return {part: Path(root) / self.group / self.name / f"{part}.{self.file_format}" for part in PARTS}


@functools.cache
def pytdc_version() -> str | None:
    """PyTDC's version where it is installed, else None; raises if it is installed but does not import."""
    if importlib.util.find_spec("tdc") is None:
        return None
    try:
        with warnings.catch_warnings():  # its modules switch every warning off when imported: keep that inside
            warnings.simplefilter("ignore")
            importlib.import_module("tdc.benchmark_group")
    except ImportError as error:
        raise ImportError(f"PyTDC is installed but does not import ({error}); {INSTALL_HINT}.") from error
    return importlib.metadata.version("PyTDC")


def read(benchmark: TdcBenchmark, root: Path) -> pd.DataFrame:
    """TDC's ``train_val`` rows, then its ``test`` rows, in TDC's columns plus ``tdc_part``."""
    parts = _read_with_pytdc(benchmark, root) if pytdc_version() else _read_files(benchmark, root)
    return pd.concat([parts[part].assign(**{PART_COLUMN: part}) for part in PARTS], ignore_index=True)


def _read_with_pytdc(benchmark: TdcBenchmark, root: Path) -> dict[str, pd.DataFrame]:
    from tdc import benchmark_group

    try:
        got = getattr(benchmark_group, benchmark.group)(path=str(root)).get(benchmark.name)
    except OSError as error:  # no connection (requests' errors are OSErrors), or files missing from the folder
        raise FileNotFoundError(f"{_missing(benchmark, root)} PyTDC could not download or read it: {error}") from error
    return {part: got[part] for part in PARTS}


def _read_files(benchmark: TdcBenchmark, root: Path) -> dict[str, pd.DataFrame]:
    files = benchmark.files(root)
    if not all(path.is_file() for path in files.values()):
        raise FileNotFoundError(f"{_missing(benchmark, root)} PyTDC is not installed ({INSTALL_HINT}; it then "
                                f"downloads the group when online), so the files must be in place.")
    read_part = pd.read_csv if benchmark.file_format == "csv" else pd.read_pickle
    return {part: read_part(path) for part, path in files.items()}


def _missing(benchmark: TdcBenchmark, root: Path) -> str:
    expected = ", ".join(str(path) for path in benchmark.files(root).values())
    return f"TDC benchmark {benchmark.name} ({benchmark.group}) is not in {root}: expected {expected}."


def split(frame: pd.DataFrame) -> Split:
    """TDC's own split of rows from :func:`read`: ``train_val`` rows train, ``test`` rows test."""
    parts = frame[PART_COLUMN]
    return Split(np.flatnonzero(parts == "train_val"), np.flatnonzero(parts == "test"))


def scoring(benchmark: TdcBenchmark) -> Scoring:
    """This suite's metrics, with ``benchmark.metric`` from ``tdc.Evaluator`` where PyTDC is installed."""
    version = pytdc_version()
    if version is None:
        return Scoring(METRICS, FILES_SOURCE)
    from tdc import Evaluator

    evaluator = Evaluator(name=benchmark.tdc_metric)
    return Scoring(METRICS | {benchmark.metric: lambda y_true, y_pred: float(evaluator(y_true, y_pred))},
                   f"pytdc-{version}")


def flat_cell_lines(frame: pd.DataFrame, ids: str = "Cell_Line_ID", features: str = "CellLine") -> pd.DataFrame:
    """``frame`` with each cell line's features (TDC stores a sequence of arrays per row) as one float32
    vector ``(n_features,)``, taken from the cell line's first row and shared by all its rows."""
    first = frame.drop_duplicates(ids)
    vectors = {cell: np.hstack(value).astype(np.float32) for cell, value in zip(first[ids], first[features])}
    return frame.assign(**{features: [vectors[cell] for cell in frame[ids]]})
