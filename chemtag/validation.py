"""Checking and normalising user input before any compute: SMILES, protein sequences, targets.

Invalid values never become numbers silently: they raise :class:`InvalidInputError` naming the rows,
or, when the user chose ``on_invalid="nan"``, are reported by position so their predictions are NaN.
"""

from __future__ import annotations

import math
import numbers
import warnings
from decimal import Decimal
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from rdkit import Chem, rdBase
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.multiclass import check_classification_targets

STANDARD_AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWY")
# IUPAC extras: B (D/N), Z (E/Q), J (I/L), U (selenocysteine), O (pyrrolysine), X (any).
EXTENDED_AMINO_ACIDS = STANDARD_AMINO_ACIDS | frozenset("BZJUOX")
PROTEIN_ALPHABETS = {"standard": STANDARD_AMINO_ACIDS, "extended": EXTENDED_AMINO_ACIDS}
ON_INVALID = ("raise", "nan")
# Longest SMILES parsed, in characters. RDKit writes canonical SMILES recursively, one C stack frame per
# atom: chains of about 10^4 atoms overflow an 8 MiB stack and kill the process, and its time grows faster
# than linearly. Drug-like SMILES have under 200 characters.
MAX_SMILES_LENGTH = 2048
_SHOWN = 5
_SHOWN_CHARACTERS = 60


class InvalidInputError(ValueError):
    """Input values that cannot be used, with the row positions that hold them."""

    def __init__(self, message: str, rows: Sequence[int]):
        super().__init__(message)
        self.rows = list(rows)


def stripped_text(value: object) -> str | None:
    """``value`` stripped, or ``None`` unless it is a non-empty string UTF-8 can encode (no lone surrogates)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value.strip()


def quiet_rdkit() -> rdBase.BlockLogs:
    """A context in which RDKit logs nothing (its parse errors are ours to report); whatever logging
    was on or off before it is restored after it."""
    return rdBase.BlockLogs()


def canonical_smiles(value: object) -> str | None:
    """RDKit's canonical SMILES of ``value``, or ``None`` when it is not a valid SMILES string, is longer
    than :data:`MAX_SMILES_LENGTH` characters, or cannot be written back (e.g. too many open rings)."""
    text = stripped_text(value)
    if text is None or len(text) > MAX_SMILES_LENGTH:
        return None
    with quiet_rdkit():
        try:
            molecule = Chem.MolFromSmiles(text)
            return Chem.MolToSmiles(molecule) if molecule is not None else None
        except (RuntimeError, ValueError):  # RDKit's errors while writing, e.g. "Too many rings open at once"
            return None


def normalised_protein(value: object, alphabet: str = "standard") -> str | None:
    """Upper-case sequence without white space, or ``None`` when a letter is outside ``alphabet``."""
    if not isinstance(value, str):
        return None
    sequence = "".join(value.split()).upper()
    if not sequence or not set(sequence) <= PROTEIN_ALPHABETS[alphabet]:
        return None
    return sequence


def is_missing(value: object) -> bool:
    """Whether ``value`` is a missing scalar: ``None``, NaN, ``pd.NA``, ``NaT`` or a NaN ``Decimal``."""
    if isinstance(value, Decimal):
        return value.is_nan()  # pd.isna raises on a signalling NaN
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def plain_text(value: object) -> str | None:
    """``value`` as stripped text; numbers are written as they print. Missing values (see :func:`is_missing`),
    infinite numbers and text UTF-8 cannot encode are invalid."""
    if is_missing(value):
        return None
    if isinstance(value, (float, np.floating, Decimal)) and not math.isfinite(value):
        return None
    try:
        return stripped_text(str(value))
    except ValueError:  # integers beyond Python's digit limit for str()
        return None


def _abbreviated(value: object) -> str:
    """``repr(value)``, cut with its length in characters when longer than fits a message."""
    text = repr(value)
    if len(text) <= _SHOWN_CHARACTERS:
        return text
    return f"{text[:_SHOWN_CHARACTERS]}... of {len(value) if isinstance(value, str) else len(text)} characters"


def report_invalid(kind: str, column: str, values: Sequence[object], rows: Sequence[int], total: int,
                   hint: str = "") -> str:
    """The message that names invalid rows, e.g. for SMILES in column 'Drug'."""
    shown = ", ".join(f"{r} ({_abbreviated(values[i])})" for i, r in enumerate(rows[:_SHOWN]))
    more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
    return (
        f"Invalid {kind} in column {column!r} at {len(rows)} of {total} rows: {shown}{more}. "
        f"{hint}Fix or drop these rows, or pass on_invalid='nan' to get NaN predictions for them."
    )


def validated_targets(y: Iterable, n_rows: int, classification: bool = False) -> np.ndarray:
    """``y`` as a 1-D array of ``n_rows``: finite numbers (float64) whose mean and spread are finite for
    regression; labels of one kind (all text or all numbers), none missing, for classification."""
    array = target_array(y, n_rows)
    return _class_labels(array) if classification else _regression_targets(array)


def target_array(y: Iterable, n_rows: int, dtype: type | None = None) -> np.ndarray:
    """``y`` as a 1-D array of ``n_rows`` targets (a column vector is accepted with sklearn's warning)."""
    if y is None:
        raise ValueError("This estimator requires y to be passed, but the target y is None.")
    try:
        array = np.asarray(y, dtype=dtype)
    except ValueError as error:  # ragged nested sequences
        raise ValueError(f"y must be 1-D (one target per row); it could not be read as an array: {error}") from None
    if array.ndim == 2 and array.shape[1] == 1:
        message = ("A column-vector y was passed when a 1d array was expected. Please change the shape of y to "
                   "(n_samples,), for example using ravel().")  # sklearn's wording, which its checks expect
        warnings.warn(message, DataConversionWarning, stacklevel=3)
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"y must be 1-D (one target per row), got shape {array.shape}.")
    if len(array) != n_rows:
        raise ValueError(f"X has {n_rows} rows but y has {len(array)}.")
    return array


def listed(rows: Sequence[int], values: Sequence[object] | None = None,
           describe: Callable[[object], str] = _abbreviated) -> str:
    """``"0, 2 (values) and 3 more"``: the first rows, with their values (as ``describe`` writes them) when given."""
    shown = [f"{r} ({describe(values[r])})" if values is not None else str(r) for r in rows[:_SHOWN]]
    return ", ".join(shown) + (f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else "")


def _real(value: object) -> float | None:
    """``value`` as a float (NaN when missing, infinite beyond float64), ``None`` when it is no real number."""
    if is_missing(value):
        return math.nan
    if not isinstance(value, (numbers.Real, Decimal, np.bool_)):
        return None
    try:
        return float(value)
    except OverflowError:  # integers beyond float64
        return math.inf if value > 0 else -math.inf


def _regression_targets(array: np.ndarray) -> np.ndarray:
    """1-D ``array`` as finite float64 targets whose mean and standard deviation are finite too."""
    if array.dtype.kind not in "biufO":  # text, dates, complex numbers
        raise ValueError(f"y must be numeric for regression, got dtype {array.dtype}.")
    if array.dtype.kind == "O":
        reals = [_real(value) for value in array]
        others = [i for i, value in enumerate(reals) if value is None]
        if others:
            raise ValueError(f"y must be numeric for regression; {len(others)} rows hold other values: "
                             f"{listed(others, array)}. Convert them to numbers explicitly.")
        array = np.asarray(reals)
    targets = array.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(targets))
    if len(bad):
        raise ValueError(f"y contains NaN or infinity at {len(bad)} rows: {listed(bad)}. "
                         "Remove or impute these rows before fitting.")
    with np.errstate(over="ignore", invalid="ignore"):
        spread_is_finite = np.isfinite(targets.mean()) and np.isfinite(targets.std())
    if not spread_is_finite:
        raise ValueError(f"y is too large to standardise in float64 (its largest magnitude is "
                         f"{np.abs(targets).max():.3g}); rescale it, e.g. divide it by a power of ten.")
    return targets


def _label_kind(value: object) -> str:
    if isinstance(value, str):
        return "str"
    return "number" if isinstance(value, (numbers.Real, np.bool_)) else type(value).__name__


def _class_labels(array: np.ndarray) -> np.ndarray:
    """1-D ``array`` as class labels: none missing, all strings or all numbers, discrete (sklearn's check)."""
    if array.dtype.kind == "O":
        missing = [i for i, value in enumerate(array) if is_missing(value)]
        if missing:
            raise ValueError(f"y has missing labels (None or NaN) at {len(missing)} rows: {listed(missing)}. "
                             "Remove these rows or label them.")
        kinds = {_label_kind(value) for value in array}
        if len(kinds) > 1 or not kinds <= {"number", "str"}:
            raise ValueError(f"Class labels must all be strings or all be numbers; y holds {sorted(kinds)}.")
        if kinds == {"number"}:
            array = np.asarray(array.tolist())
    check_classification_targets(array)  # refuses continuous targets, NaN and infinity
    return array
