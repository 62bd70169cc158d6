"""Checking and normalising user input before any compute: SMILES, protein sequences, targets.

Invalid values never become numbers silently: they raise :class:`InvalidInputError` naming the rows,
or, when the user chose ``on_invalid="nan"``, are reported by position so their predictions are NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np
from rdkit import Chem, RDLogger
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.multiclass import check_classification_targets

STANDARD_AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWY")
# IUPAC extras: B (D/N), Z (E/Q), J (I/L), U (selenocysteine), O (pyrrolysine), X (any).
EXTENDED_AMINO_ACIDS = STANDARD_AMINO_ACIDS | frozenset("BZJUOX")
PROTEIN_ALPHABETS = {"standard": STANDARD_AMINO_ACIDS, "extended": EXTENDED_AMINO_ACIDS}
ON_INVALID = ("raise", "nan")
_SHOWN = 5


class InvalidInputError(ValueError):
    """Input values that cannot be used, with the row positions that hold them."""

    def __init__(self, message: str, rows: Sequence[int]):
        super().__init__(message)
        self.rows = list(rows)


def canonical_smiles(value: object) -> str | None:
    """RDKit's canonical SMILES of ``value``, or ``None`` when it is not a valid SMILES string."""
    if not isinstance(value, str) or not value.strip():
        return None
    RDLogger.DisableLog("rdApp.*")
    try:
        molecule = Chem.MolFromSmiles(value.strip())
    finally:
        RDLogger.EnableLog("rdApp.*")
    return Chem.MolToSmiles(molecule) if molecule is not None else None


def normalised_protein(value: object, alphabet: str = "standard") -> str | None:
    """Upper-case sequence without white space, or ``None`` when a letter is outside ``alphabet``."""
    if not isinstance(value, str):
        return None
    sequence = "".join(value.split()).upper()
    if not sequence or not set(sequence) <= PROTEIN_ALPHABETS[alphabet]:
        return None
    return sequence


def plain_text(value: object) -> str | None:
    """``value`` as stripped text; numbers are written as they print; missing, NaN and infinite values are invalid."""
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return None
    text = str(value).strip()
    return text or None


def report_invalid(kind: str, column: str, values: Sequence[object], rows: Sequence[int], total: int,
                   hint: str = "") -> str:
    """The message that names invalid rows, e.g. for SMILES in column 'Drug'."""
    shown = ", ".join(f"{r} ({values[i]!r})" for i, r in enumerate(rows[:_SHOWN]))
    more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
    return (
        f"Invalid {kind} in column {column!r} at {len(rows)} of {total} rows: {shown}{more}. "
        f"{hint}Fix or drop these rows, or pass on_invalid='nan' to get NaN predictions for them."
    )


def validated_targets(y: Iterable, n_rows: int, classification: bool = False) -> np.ndarray:
    """``y`` as a 1-D array of ``n_rows``; regression targets must be finite numbers."""
    if y is None:
        raise ValueError("This estimator requires y to be passed, but the target y is None.")
    array = np.asarray(y)
    if array.ndim == 2 and array.shape[1] == 1:
        message = ("A column-vector y was passed when a 1d array was expected. Please change the shape of y to "
                   "(n_samples,), for example using ravel().")  # sklearn's wording, which its checks expect
        warnings.warn(message, DataConversionWarning, stacklevel=3)
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"y must be 1-D (one target per row), got shape {array.shape}.")
    if len(array) != n_rows:
        raise ValueError(f"X has {n_rows} rows but y has {len(array)}.")
    if classification:
        check_classification_targets(array)  # refuses continuous targets, NaN and infinity
        return array
    try:
        numbers = array.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"y must be numeric for regression, got dtype {array.dtype}.") from None
    bad = np.flatnonzero(~np.isfinite(numbers))
    if len(bad):
        listed = ", ".join(str(i) for i in bad[:_SHOWN]) + (f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")
        raise ValueError(f"y contains NaN or infinity at {len(bad)} rows: {listed}. Remove or impute these rows before fitting.")
    return numbers
