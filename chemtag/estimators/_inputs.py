"""Turning user input (DataFrames, Series, lists, 2-D arrays of strings) into validated field values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from chemtag.domains import get_domain
from chemtag.validation import InvalidInputError, plain_text, report_invalid


def has_column_names(X) -> bool:
    """Whether ``X`` names its columns: a DataFrame with at least one string column name."""
    return isinstance(X, pd.DataFrame) and any(isinstance(column, str) for column in X.columns)


def as_frame(X, fields: Sequence[str] | None = None) -> pd.DataFrame:
    """``X`` as a DataFrame with string column names.

    DataFrames with named columns keep them (as strings); a Series or 1-D sequence becomes one column;
    the columns of a 2-D array, or of a DataFrame with no string column name (``pd.DataFrame(array)``),
    are named after ``fields`` in order when their count matches, else ``x0, x1, ...``.
    """
    if sparse.issparse(X):
        raise TypeError("Sparse input is not supported: pass a DataFrame or a dense 2-D array of strings.")
    if isinstance(X, pd.DataFrame) and not has_column_names(X):
        X = X.to_numpy(dtype=object)
    if isinstance(X, pd.DataFrame):
        frame = X
    elif isinstance(X, pd.Series):
        frame = X.to_frame(name=X.name if isinstance(X.name, str) else (fields[0] if fields and len(fields) == 1 else "x0"))
    else:
        if isinstance(X, str):
            raise TypeError("X must be a table of rows (DataFrame, 2-D array or list of strings), not a single string.")
        try:
            array = np.asarray(X, dtype=object)
        except ValueError as error:
            raise TypeError(f"X could not be read as a table: {error}") from None
        if array.ndim == 1:
            if not fields or len(fields) != 1:
                raise ValueError(
                    "Expected a 2-D table, got a 1-D array. Reshape your data with array.reshape(-1, 1) for a single "
                    "column, or pass a DataFrame."
                )
            array = array[:, None]
        if array.ndim != 2:
            raise ValueError(f"X must be 1-D or 2-D, got an array of shape {array.shape}.")
        names = list(fields) if fields and len(fields) == array.shape[1] else [f"x{i}" for i in range(array.shape[1])]
        frame = pd.DataFrame(array, columns=names, dtype=object)  # no inference: pandas 3.0 overflowed on huge ints
    if frame.shape[0] == 0:
        raise ValueError("X has no rows: at least one row is required.")
    if frame.shape[1] == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={frame.shape}) while a minimum of 1 is required.")
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)  # a new frame: the caller's keeps its names
    if frame.columns.duplicated().any():
        duplicated = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise ValueError(f"X has duplicated column names {duplicated}.")
    if any(isinstance(value, complex) for column in frame.columns for value in frame[column].tolist()):
        raise ValueError("Complex data not supported: X holds complex numbers.")
    return frame


class Allowed(NamedTuple):
    """The values a field may take once normalised, and the hint shown for any other."""

    values: Collection[str]
    hint: str


@dataclass(frozen=True)
class FeatureTable:
    """Numeric features of named entities: ``ids`` ``(n,)`` normalised text, ``values`` ``(n, f)`` float32."""

    ids: list[str]
    values: np.ndarray


def read_fields(frame: pd.DataFrame, fields: Mapping[str, str], columns: Mapping[str, str] | None,
                protein_alphabet: str, on_invalid: str,
                allowed: Mapping[str, Allowed] | None = None) -> tuple[dict[str, list[str]], np.ndarray]:
    """Normalised text for each field, and the ``(n,)`` mask of rows with an invalid value.

    ``fields`` maps template field -> domain name; ``columns`` optionally maps a field to the user's
    column name (by default the field's own name); ``allowed`` optionally limits a field to given
    values (e.g. the cell lines that have features). With ``on_invalid="raise"`` invalid rows raise
    :class:`InvalidInputError` naming them; with ``"nan"`` they are only masked (and logged).
    """
    allowed = dict(allowed or {})
    columns = dict(columns or {})
    unknown = set(columns) - set(fields)
    if unknown:
        raise ValueError(f"columns names unknown fields {sorted(unknown)}; the fields are {list(fields)}.")
    values, messages = {}, []
    invalid = np.zeros(len(frame), dtype=bool)
    for field, domain_name in fields.items():
        column = columns.get(field, field)
        if column not in frame.columns:
            hint = f" Pass columns={{{field!r}: '<your column>'}} to use another column." if column == field else ""
            raise ValueError(
                f"X has no column {column!r} (needed for {domain_name} input); its columns are {list(frame.columns)}.{hint}"
            )
        domain = get_domain(domain_name, protein_alphabet)
        raw = frame[column].tolist()
        too_long = set(_too_long(raw, domain.max_length))
        normalised = [None if i in too_long else domain.normalise(value) for i, value in enumerate(raw)]
        unparsed = [i for i, value in enumerate(normalised) if value is None and i not in too_long]
        known = allowed.get(field)
        not_allowed = _not_allowed(normalised, known.values) if known is not None else []
        kind = domain_name if domain.tag else "values"
        long_hint = f"{domain_name} longer than {domain.max_length} characters are not parsed. "
        for bad, hint in ((unparsed, domain.hint), (sorted(too_long), long_hint),
                          (not_allowed, known.hint if known is not None else "")):
            if bad:
                messages.append(report_invalid(kind, column, [raw[i] for i in bad], bad, len(raw), hint))
                invalid[bad] = True
        values[field] = [value or "" for value in normalised]
    if messages and on_invalid == "raise":
        raise InvalidInputError(" ".join(messages), np.flatnonzero(invalid).tolist())
    return values, invalid


def _not_allowed(normalised: list[str | None], values: Collection[str]) -> list[int]:
    """Positions of the valid values in ``normalised`` that are not among ``values``."""
    return [i for i, value in enumerate(normalised) if value is not None and value not in values]


def _too_long(raw: list, max_length: int | None) -> list[int]:
    """Positions of the strings in ``raw`` longer than ``max_length`` characters once stripped."""
    if max_length is None:
        return []
    return [i for i, value in enumerate(raw) if isinstance(value, str) and len(value.strip()) > max_length]


def read_feature_table(table: object, name: str) -> FeatureTable:
    """``table``, a DataFrame indexed by entity ID with one numeric column per feature, checked: IDs
    non-empty and distinct as text, features finite. ``name`` (the parameter) is used in messages."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame indexed by ID with one numeric column per feature, "
                        f"got {type(table).__name__}.")
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one feature column, got shape {table.shape}.")
    text = [column for column, dtype in table.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if text:
        raise ValueError(f"{name} has non-numeric columns {text[:5]}; its IDs belong in the index, "
                         f"e.g. frame.set_index({str(text[0])!r}).")
    ids = [plain_text(value) for value in table.index]
    missing = [i for i, value in enumerate(ids) if value is None]
    if missing:
        raise ValueError(f"{name} has missing or empty IDs in its index at rows {missing[:5]}.")
    duplicated = sorted(set(pd.Index(ids)[pd.Index(ids).duplicated()]))
    if duplicated:
        raise ValueError(f"{name} has duplicated IDs {duplicated[:5]}.")
    values = table.to_numpy(dtype=np.float64).astype(np.float32)
    not_finite = [ids[i] for i in np.flatnonzero(~np.isfinite(values).all(axis=1))]
    if not_finite:
        raise ValueError(f"{name} has missing or infinite features (beyond float32) for IDs {not_finite[:5]}.")
    return FeatureTable(ids, values)
