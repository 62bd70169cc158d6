"""The benchmark tasks: where each dataset is read from, how it is split and labelled, what is reported.

Data live in ``../shared/data`` next to the project (``--data-dir`` to change); nothing is copied. The
TDC benchmark groups are read from TDC's layout under the same folder (:mod:`benchmarks.tdc_groups`).
Budgets set the rows each task takes and how long the iterative methods train: ``full`` is the whole
split; ``quick`` is a seeded subset of each side small enough for a 2-core CPU, and for protein inputs
keeps only the first ``max_residues`` residues (the descriptor label is computed on what is kept).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from Bio import SeqIO

from chemtag import BindingAffinityRegressor, DrugComboRegressor, ProteinDescriptorRegressor, QEDRegressor
from chemtag.descriptors import protein_descriptor, qed
from chemtag.validation import normalised_protein

from benchmarks import tdc_groups
from benchmarks.metrics import Scoring, suite_scoring
from benchmarks.splits import Split, davis_setting1, pair_split, random_split
from benchmarks.tdc_groups import TdcBenchmark

DATA_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
TEST_FRACTION = 0.2  # random and pair splits hold out one row in five


@dataclass(frozen=True)
class Rows:
    """How much of a split a budget uses: rows drawn from each side (``None``: all) and a protein crop."""

    n_train: int | None = None
    n_test: int | None = None
    max_residues: int | None = None


@dataclass(frozen=True)
class Budget:
    """Training length of the iterative methods (maximum epochs; some stop early on a share of train)."""

    name: str
    tag_epochs: int      # chemtag's estimator
    peft_epochs: int     # prompt tuning and LoRA
    neural_epochs: int   # DeepDTA and DeepSynergy
    boosting_rounds: int  # trees of gradient boosting
    forest_trees: int    # trees of the random forest
    batch_size: int      # rows per step of chemtag's estimator, prompt tuning and LoRA


BUDGETS = {
    "quick": Budget("quick", tag_epochs=3, peft_epochs=1, neural_epochs=30, boosting_rounds=200, forest_trees=200,
                    batch_size=8),
    "full": Budget("full", tag_epochs=20, peft_epochs=5, neural_epochs=100, boosting_rounds=1000, forest_trees=300,
                   batch_size=16),
}
QUICK_PROTEIN_CROP = 64  # residues kept of each protein in the quick budget


@dataclass(frozen=True)
class Task:
    """A dataset, its split and labels, its inputs and the chemtag preset that models it.

    ``inputs`` maps input columns to kinds (``"molecule"``, ``"protein"``, ``"cell_line"``: a name
    looked up in the O'Neil expression table, ``"text"``, ``"vector"``: numeric features ``(f,)`` per
    row); ``split(frame, fold, seed)`` returns a :class:`~benchmarks.splits.Split` of the rows ``read``
    returns; ``label(frame)`` gives targets ``(n,)`` for (possibly cropped) rows; ``scoring()``, called
    when a run starts, gives the metric functions and the ``source`` recorded with the results.
    """

    name: str
    description: str
    inputs: dict[str, str]
    estimator: type
    metrics: tuple[str, ...]
    read: Callable[[Path], pd.DataFrame]
    split: Callable[[pd.DataFrame, int, int], Split]
    label: Callable[[pd.DataFrame], np.ndarray]
    quick: Rows
    full: Rows = field(default_factory=Rows)
    n_folds: int = 1
    scoring: Callable[[], Scoring] = suite_scoring

    def rows(self, budget: str) -> Rows:
        return self.quick if budget == "quick" else self.full

    def columns(self, kind: str) -> list[str]:
        """Input columns of one kind, in order."""
        return [column for column, k in self.inputs.items() if k == kind]


def crop_proteins(frame: pd.DataFrame, columns: list[str], max_residues: int | None) -> pd.DataFrame:
    """A copy of ``frame`` with each protein column cut to its first ``max_residues`` residues."""
    if max_residues is None or not columns:
        return frame
    return frame.assign(**{column: frame[column].str.slice(0, max_residues) for column in columns})


def read_cell_expression(data_dir: Path) -> pd.DataFrame:
    """O'Neil cell-line expression z-scores: ``(32 cell lines, 651 genes)``, indexed by cell line."""
    return pd.read_csv(data_dir / "oneil_cell_expression.csv.gz", index_col="SAMPLE_NAME")


def _read_davis(data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(data_dir / "davis.csv.gz", dtype={"fold": str})


def _read_oneil(data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(data_dir / "oneil.csv.gz")


def _read_moses(data_dir: Path) -> pd.DataFrame:
    with gzip.open(data_dir / "smiles_moses_100k.txt.gz", "rt") as handle:
        return pd.DataFrame({"Drug": [line.strip() for line in handle if line.strip()]})


def _read_proteins(data_dir: Path) -> pd.DataFrame:
    """Distinct sequences of standard amino acids (duplicates would put one input on both sides)."""
    with gzip.open(data_dir / "proteins.fasta.gz", "rt") as handle:
        records = [(record.id, normalised_protein(str(record.seq))) for record in SeqIO.parse(handle, "fasta")]
    frame = pd.DataFrame(records, columns=["Target_ID", "Target"]).dropna()
    return frame.drop_duplicates("Target").reset_index(drop=True)


def _random(frame: pd.DataFrame, fold: int, seed: int) -> Split:
    return random_split(len(frame), TEST_FRACTION, seed)


def _tdc_split(frame: pd.DataFrame, fold: int, seed: int) -> Split:
    return tdc_groups.split(frame)


def _y(frame: pd.DataFrame) -> np.ndarray:
    return frame["Y"].to_numpy(float)


BINDINGDB_PATENT = TdcBenchmark("dti_dg_group", "bindingdb_patent", "csv", tdc_metric="pcc", metric="pearson")
DRUGCOMB_CSS = TdcBenchmark("drugcombo_group", "drugcomb_css", "pkl", tdc_metric="mae", metric="mae")


def _read_drugcomb_css(data_dir: Path) -> pd.DataFrame:
    return tdc_groups.flat_cell_lines(tdc_groups.read(DRUGCOMB_CSS, data_dir))


TDC_TASKS: dict[str, Task] = {
    "tdc-bindingdb-patent": Task(
        "tdc-bindingdb-patent", "TDC dti_dg_group BindingDB_Patent: train on TDC's train_val (patents of 2013-2018), "
        "test on its test (2019-2021)", {"Target": "protein", "Drug": "molecule"}, BindingAffinityRegressor,
        ("pearson", "spearman", "mse"), partial(tdc_groups.read, BINDINGDB_PATENT), _tdc_split, _y,
        quick=Rows(128, 64, QUICK_PROTEIN_CROP), scoring=partial(tdc_groups.scoring, BINDINGDB_PATENT),
    ),
    "tdc-drugcomb-css": Task(
        "tdc-drugcomb-css", "TDC drugcombo_group DrugComb_CSS: train on TDC's train_val, test on its test; the "
        "cell line as text for chemtag, its CellLine features for the expert models",
        {"Drug1": "molecule", "Drug2": "molecule", "Cell_Line_ID": "text", "CellLine": "vector"}, DrugComboRegressor,
        ("mae", "rmse", "pearson"), _read_drugcomb_css, _tdc_split, _y, quick=Rows(128, 64),
        scoring=partial(tdc_groups.scoring, DRUGCOMB_CSS),
    ),
}


TASKS: dict[str, Task] = {
    "ba-davis": Task(
        "ba-davis", "Davis kinase binding affinity (pKd), DeepDTA setting 1: folds 0-4 train, `test` test",
        {"Target": "protein", "Drug": "molecule"}, BindingAffinityRegressor, ("mse", "ci", "pearson", "spearman"),
        _read_davis, lambda frame, fold, seed: davis_setting1(frame["fold"]), _y,
        quick=Rows(128, 64, QUICK_PROTEIN_CROP),
    ),
    "dc-oneil": Task(
        "dc-oneil", "O'Neil drug-combination synergy (Loewe), 5 folds grouped by unordered drug pair",
        {"Drug1": "molecule", "Drug2": "molecule", "Cell_Line_ID": "cell_line"}, DrugComboRegressor,
        ("mae", "rmse", "pearson"), _read_oneil,
        lambda frame, fold, seed: pair_split(frame["Drug1_ID"], frame["Drug2_ID"], fold, 5, seed), _y,
        quick=Rows(128, 64), n_folds=5,
    ),
    "qed": Task(
        "qed", "RDKit QED of MOSES SMILES, random 80/20 split", {"Drug": "molecule"}, QEDRegressor, ("mse",),
        _read_moses, _random, lambda frame: qed(frame["Drug"]), quick=Rows(128, 64),
    ),
    "descriptor": Task(
        "descriptor", "GRAVY (chemtag's default protein descriptor) of distinct proteins, random 80/20 split",
        {"Target": "protein"}, ProteinDescriptorRegressor, ("mse",), _read_proteins, _random,
        lambda frame: protein_descriptor(frame["Target"]), quick=Rows(128, 64, QUICK_PROTEIN_CROP),
    ),
    **TDC_TASKS,
}
