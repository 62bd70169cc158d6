"""Expert features: Morgan count fingerprints, amino-acid and dipeptide composition, cell-line features."""

from __future__ import annotations

from functools import lru_cache
from itertools import product

import numpy as np
import pandas as pd
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator
from sklearn.base import BaseEstimator, TransformerMixin

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
DIPEPTIDES = ["".join(pair) for pair in product(AMINO_ACIDS, repeat=2)]
MORGAN_RADIUS, MORGAN_BITS = 2, 1024


@lru_cache(maxsize=None)
def _morgan_generator():
    return rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)


@lru_cache(maxsize=100_000)
def _morgan(smiles: str) -> np.ndarray:
    molecule = Chem.MolFromSmiles(smiles)
    if molecule is None:
        raise ValueError(f"Invalid SMILES: {smiles!r}.")
    return _morgan_generator().GetCountFingerprintAsNumPy(molecule).astype(np.float32)


def morgan_counts(smiles) -> np.ndarray:
    """Morgan count fingerprints (radius 2, 1024 bins): ``(n, 1024)`` float32."""
    return np.stack([_morgan(s) for s in smiles]) if len(smiles) else np.empty((0, MORGAN_BITS), np.float32)


@lru_cache(maxsize=10_000)
def _composition(sequence: str) -> np.ndarray:
    residues = np.array([sequence.count(a) for a in AMINO_ACIDS], dtype=np.float32)
    pairs = pd.Series([sequence[i:i + 2] for i in range(len(sequence) - 1)]).value_counts()
    dipeptides = pairs.reindex(DIPEPTIDES, fill_value=0).to_numpy(np.float32)
    return np.concatenate([residues / max(len(sequence), 1), dipeptides / max(len(sequence) - 1, 1)])


def protein_composition(sequences) -> np.ndarray:
    """Amino-acid (20) and dipeptide (400) composition, as fractions: ``(n, 420)`` float32."""
    return np.stack([_composition(s) for s in sequences])


class ExpertFeatures(TransformerMixin, BaseEstimator):
    """Rows of a task's input columns -> one feature vector per row.

    Molecule columns are fingerprinted and summed (so a drug pair is unordered), protein columns
    become composition, cell-line columns look up ``expression`` (a table indexed by cell line), vector
    columns (one array ``(f,)`` per row) are stacked; other kinds (text) are left out.
    """

    def __init__(self, inputs: dict[str, str], expression: pd.DataFrame | None = None):
        self.inputs = inputs
        self.expression = expression

    def fit(self, X: pd.DataFrame, y=None) -> "ExpertFeatures":
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        molecules = [c for c, kind in self.inputs.items() if kind == "molecule"]
        blocks = [sum(morgan_counts(X[c].tolist()) for c in molecules)] if molecules else []
        blocks += [protein_composition(X[c].tolist()) for c, kind in self.inputs.items() if kind == "protein"]
        blocks += [self.expression.loc[X[c]].to_numpy(np.float32) for c, kind in self.inputs.items()
                   if kind == "cell_line"]
        blocks += [np.stack(X[c].tolist()).astype(np.float32) for c, kind in self.inputs.items() if kind == "vector"]
        return np.hstack(blocks)
