"""Fuzzing: every input predicts, or raises a ValueError/TypeError that names the problem.

Hypothesis draws SMILES-like and protein-like text, tables (missing, renamed, duplicated and extra columns;
numbers, None, NaN, pd.NA, NaT and empty strings where text belongs; string and categorical dtypes;
duplicated indexes), arrays of any shape and dtype, sparse matrices, other objects, and targets. They go
through tiny fitted models. A call either returns finite predictions -- NaN exactly on the rows with an
invalid value under ``on_invalid="nan"`` -- or raises a ValueError/TypeError carrying one of chemtag's own
messages, which names the columns and rows at fault. Any other exception, a crash or a hang fails.

Which rows are invalid comes from the domains' normalisers (``get_domain(...).normalise``, tested on their
own in ``test_validation.py``); these properties test that every path from user input to predictions honours
them. The default profile is small; ``scripts/fuzz.py`` runs the same properties with many more cases.
"""

from __future__ import annotations

import copy
import faulthandler
import math
import numbers
import os
import re
import subprocess
import sys
import warnings
from collections import Counter
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rdkit import Chem
from scipy import sparse

from chemtag import (
    BindingAffinityRegressor,
    DrugComboRegressor,
    InvalidInputError,
    ProteinDescriptorRegressor,
    QEDRegressor,
    TagLLMClassifier,
    TagLLMRegressor,
)
from chemtag.domains import get_domain
from chemtag.estimators._base import TagLLMEstimator
from chemtag.estimators._inputs import as_frame
from chemtag.validation import MAX_SMILES_LENGTH, ON_INVALID, canonical_smiles, is_missing, plain_text

EXAMPLES = int(os.environ.get("CHEMTAG_FUZZ_EXAMPLES", "50"))  # per property; scripts/fuzz.py raises it
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                           HealthCheck.function_scoped_fixture],
)
HANG_SECONDS = 300  # one call running this long counts as a hang: every thread's stack is dumped, the run stops
OUTCOMES: Counter = Counter()  # (property, outcome) -> cases run; scripts/fuzz.py prints it

FAST = dict(backbone="tiny-llama", max_epochs=1, verbose=0, validation_fraction=0)
SMILES = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "C1CC1", "[Na+].[Cl-]",
          "C[C@@H](O)c1ccccc1", "N#N", "O", "OC(=O)/C=C/C(=O)O", "c1ccc2[nH]ccc2c1", "FC(F)(F)F"]
PROTEINS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMSLFDFFKNKGSA", "ACDEFGHIKLMNPQRSTVWY",
            "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF"]
CELL_LINES = ["A549", "MCF7", "HT29", "SK-MEL-30", "PC-3", "OVCAR3"]
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
SMILES_CHARACTERS = "CNOSPFIBrclnos()[]=#@+-.%/\\0123456789H"

# How every error chemtag raises for bad input opens (sklearn's for labels), by a short name for the counts.
KNOWN_MESSAGES = {
    "sparse X": r"Sparse input is not supported", "X a string": r"X must be a table of rows",
    "X unreadable": r"X could not be read as a table", "X 1-D": r"Expected a 2-D table, got a 1-D array",
    "X not 1-D/2-D": r"X must be 1-D or 2-D, got an array of shape", "X no rows": r"X has no rows",
    "X no columns": r"Found array with 0 feature\(s\)", "X complex": r"Complex data not supported",
    "X duplicated columns": r"X has duplicated column names", "X missing column": r"X has no column .+ \(needed for",
    "X column count": r"X has \d+ features, but \w+ is expecting", "prompt too long": r"\d+ prompts are longer than",
    "invalid rows": r"Invalid [\w ]+ in column .+ at \d+ of \d+ rows", "no label": r"Some rows have invalid input",
    "y not 1-D": r"y must be 1-D \(one target per row\)", "y length": r"X has \d+ rows but y has \d+\.",
    "y not numeric": r"y must be numeric for regression", "y NaN/inf": r"y contains NaN or infinity at \d+ rows",
    "y too large": r"y is too large to standardise", "y missing labels": r"y has missing labels",
    "y mixed labels": r"Class labels must all be strings or all be numbers", "y None": r"This estimator requires y",
    "y continuous": r"Unknown label type", "y NaN/inf labels": r"Input y contains (NaN|infinity)",
    "y bytes labels": r"Support for labels represented as bytes",
}


TOO_LONG = re.compile(r"\d+ prompts are longer than the limit of (\d+) tokens: rows (.*)\. Shorten")


def error_kind(message: str) -> str | None:
    """The name of the known message ``message`` opens with, or None."""
    return next((name for name, pattern in KNOWN_MESSAGES.items() if re.match(pattern, message)), None)


# ----------------------------------------------------------------------------- strategies
def padded(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Text from ``strategy`` with white space around it."""
    space = st.text(" \t\n\r", max_size=3)
    return st.builds(lambda before, text, after: before + text + after, space, strategy, space)


@st.composite
def mutated(draw, texts: list[str], alphabet: str) -> str:
    """One of ``texts`` with one to three characters inserted, deleted or replaced from ``alphabet``."""
    text = draw(st.sampled_from(texts))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        character = draw(st.sampled_from(alphabet))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        text = text[:i] + (character if edit != "delete" else "") + text[i + (edit != "insert"):]
    return text


def repeated(pieces: list[str], most: int) -> st.SearchStrategy[str]:
    """Very long text: one of ``pieces`` repeated a hundred to ``most`` times."""
    return st.builds(lambda piece, times: piece * times, st.sampled_from(pieces), st.integers(100, most))


# Surrogates, private use, control and format characters, odd white space.
ODD_TEXT = st.text(st.characters(categories=["Cs", "Co", "Cc", "Cf", "Zs", "Zl"]), min_size=1, max_size=4)
MISSING = st.sampled_from([None, np.nan, pd.NA, pd.NaT, np.float32("nan"), np.datetime64("NaT"), Decimal("NaN"),
                           Decimal("sNaN")])
NUMBERS = st.one_of(st.integers(), st.floats(), st.booleans(), st.decimals(), st.just(10**400))
OTHERS = st.one_of(st.binary(max_size=4), st.lists(st.integers(0, 3), max_size=2), st.datetimes())
SMILES_LIKE = st.one_of(
    padded(st.sampled_from(SMILES)), mutated(SMILES, SMILES_CHARACTERS), st.text(SMILES_CHARACTERS, max_size=30),
    st.text(max_size=12), ODD_TEXT, st.sampled_from(["", " ", "\t\n", "<SMILES>", "{Drug}"]),
    repeated(["C", "CCO", "c1ccccc1", "C("], 1200),
)
PROTEIN_LIKE = st.one_of(
    padded(st.sampled_from(PROTEINS)), st.text(AMINO_ACIDS, min_size=1, max_size=60),
    st.text(AMINO_ACIDS + AMINO_ACIDS.lower() + " \t\n", max_size=60),
    mutated(PROTEINS, AMINO_ACIDS.lower() + "BZJUOX0123456789*- "), st.text(max_size=12), ODD_TEXT,
    st.sampled_from(["", "   "]), repeated(PROTEINS + list(AMINO_ACIDS), 300),
)
TEXT_LIKE = st.one_of(
    padded(st.sampled_from(CELL_LINES)), st.text(max_size=12), ODD_TEXT,
    st.sampled_from(["", " ", "<Output>", "{name}", "<|endoftext|>", "nan", "None"]), repeated(["word ", "1.5 "], 3000),
)


def cells(values: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly ``values``; sometimes a missing value, a number of any kind, bytes, a list or a datetime."""
    return st.one_of(values, values, values, MISSING, NUMBERS, OTHERS)


SMILES_CELLS, PROTEIN_CELLS, TEXT_CELLS = cells(SMILES_LIKE), cells(PROTEIN_LIKE), cells(TEXT_LIKE)
ANY_CELL = st.one_of(SMILES_CELLS, TEXT_CELLS)
FATES = ("kept",) * 9 + ("missing", "renamed", "duplicated", "numbers")


def _series(values: list, dtype) -> pd.Series:
    """``values`` as a Series of ``dtype`` where pandas can convert them, else of objects."""
    try:
        return pd.Series(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError, InvalidOperation):  # e.g. a signalling NaN as "string"
        return pd.Series(values, dtype=object)


def indexes(n: int) -> st.SearchStrategy[pd.Index]:
    """A range index, a fully duplicated one, labels of text or small integers, or a two-level index."""
    return st.one_of(
        st.just(pd.RangeIndex(n)), st.just(pd.Index([0] * n)),
        st.lists(st.text(max_size=3), min_size=n, max_size=n).map(pd.Index),
        st.lists(st.integers(-3, 3), min_size=n, max_size=n).map(pd.Index),
        st.just(pd.MultiIndex.from_arrays([list(range(n)), [0] * n])),
    )


@st.composite
def frames(draw, columns: dict[str, st.SearchStrategy]) -> pd.DataFrame:
    """A DataFrame for a model reading ``columns`` (name -> cell strategy): each column kept, missing,
    renamed, duplicated or numeric; up to two extra columns; any dtype and index; zero to five rows."""
    n = draw(st.sampled_from(range(6)))  # uniform: an integer strategy would draw 0 (no rows) far more often
    names, series = [], []
    dtypes = st.sampled_from([None, object, "string", "category"])

    def add(name, values):
        names.append(name)
        series.append(_series(values, draw(dtypes)))

    for name, values in columns.items():
        fate = draw(st.sampled_from(FATES))
        if fate == "missing":
            continue
        numeric = st.one_of(NUMBERS, st.complex_numbers(max_magnitude=10))
        rows = st.lists(numeric if fate == "numbers" else values, min_size=n, max_size=n)
        add(f"my {name}" if fate == "renamed" else name, draw(rows))
        if fate == "duplicated":
            add(name, draw(rows))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.one_of(st.text(max_size=6), st.integers(-2, 2), st.none(), st.sampled_from([*columns, "0"])))
        add(name, draw(st.lists(ANY_CELL, min_size=n, max_size=n)))
    frame = pd.concat(series, axis=1, ignore_index=True) if series else pd.DataFrame(index=range(n))
    frame.columns = names
    frame.index = draw(indexes(n))
    return frame


def _shapes(frame: pd.DataFrame) -> list:
    """The frame's data as a DataFrame, an object array, a list of rows and its first column."""
    array = frame.to_numpy(dtype=object)
    return [frame, array, array.tolist(), frame.iloc[:, 0] if frame.shape[1] else frame]


def tables(columns: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return frames(columns).flatmap(lambda frame: st.sampled_from(_shapes(frame)))


ARRAYS = st.one_of(
    hnp.arrays(st.one_of(hnp.scalar_dtypes(), hnp.unicode_string_dtypes(max_len=8), hnp.byte_string_dtypes(max_len=4)),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    hnp.arrays(object, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4), elements=ANY_CELL),
)
SPARSE = st.builds(
    lambda dense, layout: sparse.coo_matrix(dense).asformat(layout),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=4), elements=st.floats(-5, 5)),
    st.sampled_from(["csr", "csc", "coo", "lil", "dok", "bsr", "dia"]),
) | st.builds(sparse.csr_array, hnp.arrays(np.float64, (3, 1), elements=st.floats(-5, 5)))
OBJECTS = st.one_of(
    st.none(), st.text(max_size=8), st.integers(), st.floats(), st.frozensets(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.lists(SMILES_CELLS, max_size=3), max_size=2),
    st.lists(st.lists(SMILES_CELLS, max_size=3), max_size=4), st.builds(iter, st.lists(SMILES_CELLS, max_size=3)),
)


def wrong_lengths(n: int) -> st.SearchStrategy[int]:
    """Lengths from 0 to 7 other than ``n``."""
    return st.integers(0, 7).filter(lambda m: m != n)


def targets(n: int) -> st.SearchStrategy:
    """Regression targets for ``n`` rows: valid floats, floats with NaN/inf/huge values, any dtype, mixed
    lists, a nullable Series, the wrong length, 2-D, ragged lists and scalars."""
    mixed = st.one_of(st.floats(), st.integers(), st.booleans(), st.decimals(), st.none(), st.text(max_size=3),
                      st.complex_numbers(max_magnitude=5), st.just(10**400), st.sampled_from([pd.NA, np.nan]))
    dtypes = st.one_of(hnp.scalar_dtypes(), hnp.unicode_string_dtypes(max_len=4), hnp.byte_string_dtypes(max_len=4))
    return st.one_of(
        hnp.arrays(np.float64, n, elements=st.floats(-1e6, 1e6)), hnp.arrays(np.float64, n), hnp.arrays(dtypes, n),
        st.lists(mixed, min_size=n, max_size=n),
        st.lists(st.one_of(st.floats(-5, 5), st.none()), min_size=n, max_size=n).map(
            lambda values: pd.Series(values, dtype="Float64")),
        wrong_lengths(n).flatmap(lambda m: hnp.arrays(np.float64, m, elements=st.floats(-5, 5))),
        st.integers(1, 3).flatmap(lambda k: hnp.arrays(np.float64, (n, k), elements=st.floats(-5, 5))),
        st.lists(st.lists(st.floats(-5, 5), max_size=2), min_size=n, max_size=n),
        st.one_of(st.none(), st.floats(), st.text(max_size=3)),
    )


def labels(n: int) -> st.SearchStrategy:
    """Class labels for ``n`` rows: text or integers, mixed kinds with missing values, floats, wrong shapes."""
    mixed = st.one_of(st.sampled_from(["a", "b"]), st.integers(0, 2), st.none(), st.just(np.nan), st.floats(),
                      st.booleans(), st.binary(max_size=2))
    return st.one_of(
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n),
        st.lists(st.integers(0, 2), min_size=n, max_size=n).map(np.asarray),
        st.lists(mixed, min_size=n, max_size=n).map(lambda v: np.asarray(v, dtype=object)),
        st.lists(mixed, min_size=n, max_size=n).map(lambda v: pd.Series(v, dtype=object)),
        hnp.arrays(np.float64, n),
        wrong_lengths(n).flatmap(lambda m: st.lists(st.sampled_from("ab"), min_size=m, max_size=m)),
        st.integers(2, 3).flatmap(lambda k: hnp.arrays(np.int64, (n, k), elements=st.integers(0, 2))),
    )


# ----------------------------------------------------------------------------- the properties' checks
def fitted_models() -> dict[str, TagLLMEstimator]:
    """One tiny fitted model per kind of input."""
    y = np.linspace(0, 1, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no pretrained tags ship for the tiny backbone
        return {
            "qed": QEDRegressor(**FAST).fit(pd.DataFrame({"Drug": SMILES[:6]}), y),
            "affinity": BindingAffinityRegressor(**FAST).fit(
                pd.DataFrame({"Target": PROTEINS + PROTEINS[:2], "Drug": SMILES[:6]}), y),
            "combo": DrugComboRegressor(**FAST).fit(
                pd.DataFrame({"Drug1": SMILES[:6], "Drug2": SMILES[6:], "Cell_Line_ID": CELL_LINES}), y),
            "text": TagLLMRegressor(**FAST).fit(
                pd.DataFrame({"name": CELL_LINES, "dose": [0.1, 1, 10, 2.5, 0, -1]}), y),
            "classifier": TagLLMClassifier({"Drug": "SMILES"}, **FAST).fit(
                pd.DataFrame({"Drug": SMILES[:6]}), ["a", "b", "c"] * 2),
        }


@pytest.fixture(scope="module")
def models() -> dict[str, TagLLMEstimator]:
    return fitted_models()


@contextmanager
def no_hang():
    """Dump every thread's stack and stop the process if the block runs longer than HANG_SECONDS."""
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def call(label: str, method, *args):
    """``method(*args)``'s result, or the ValueError/TypeError it raised; counts the outcome under ``label``.
    Any other exception propagates and fails the property."""
    try:
        with no_hang(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = method(*args)
    except (ValueError, TypeError) as error:
        OUTCOMES[label, error_kind(str(error)) or f"unknown {type(error).__name__}"] += 1
        return error
    OUTCOMES[label, "ok"] += 1
    return result


def invalid_rows(X, fields: dict[str, str], columns: dict[str, str] | None) -> np.ndarray | None:
    """Rows of ``X`` with a value its field's domain refuses; ``None`` when ``X`` is no table holding a
    column for every field."""
    try:
        frame = as_frame(X, list(fields))
    except (ValueError, TypeError):
        return None
    invalid = np.zeros(len(frame), dtype=bool)
    for field, domain in fields.items():
        column = (columns or {}).get(field, field)
        if column not in frame.columns:
            return None
        invalid |= [get_domain(domain).normalise(value) is None for value in frame[column].tolist()]
    return invalid


def check_error(error: Exception, fields: dict[str, str], columns: dict[str, str] | None,
                invalid: np.ndarray | None) -> None:
    """``error`` carries a known message; invalid rows, missing columns and long prompts are named."""
    message = str(error)
    assert error_kind(message), f"{type(error).__name__} with an unknown message: {message}"
    wanted = [(columns or {}).get(field, field) for field in fields]
    if isinstance(error, InvalidInputError):
        assert invalid is not None and error.rows == np.flatnonzero(invalid).tolist(), message
        assert any(f"in column {column!r}" in message for column in wanted), message
    elif message.startswith("X has no column"):
        assert invalid is None and any(f"X has no column {column!r}" in message for column in wanted), message
    elif TOO_LONG.match(message):
        limit, shown = TOO_LONG.match(message).groups()
        for row, tokens in re.findall(r"(\d+) \((\d+) tokens\)", shown):
            assert not invalid[int(row)] and int(tokens) > int(limit), message
    elif error_kind(message) == "no label":
        assert invalid is not None and invalid.any(), message


def check_outputs(model: TagLLMEstimator, outputs, invalid: np.ndarray | None, on_invalid: str, labels: bool) -> None:
    """Predictions for a readable table: NaN exactly on invalid rows (``on_invalid="nan"`` only), finite
    elsewhere; ``labels`` are fitted classes (and exist only when no row is invalid)."""
    assert invalid is not None, "predicted from input whose columns the model cannot read"
    assert on_invalid == "nan" or not invalid.any(), "predicted from invalid rows under on_invalid='raise'"
    outputs = np.asarray(outputs)
    assert len(outputs) == len(invalid)
    if labels:
        assert not invalid.any() and np.isin(outputs, model.classes_).all()
        return
    nan_rows = np.isnan(outputs.reshape(len(outputs), -1)).any(axis=1)
    np.testing.assert_array_equal(nan_rows, invalid)
    assert np.isfinite(outputs[~invalid]).all()


def check_predictions(label: str, model: TagLLMEstimator, X, on_invalid: str, method: str = "predict") -> None:
    """The property: ``model.<method>(X)`` predicts as :func:`check_outputs` says, or raises as
    :func:`check_error` says."""
    model = copy.copy(model).set_params(on_invalid=on_invalid)  # the shared fitted model stays as it is
    invalid = invalid_rows(X, model.fields_, model.columns)
    outcome = call(label, getattr(model, method), X)
    if isinstance(outcome, Exception):
        check_error(outcome, model.fields_, model.columns, invalid)
        if sparse.issparse(X):
            assert isinstance(outcome, TypeError) and str(outcome).startswith("Sparse input")
    else:
        check_outputs(model, outcome, invalid, on_invalid, labels=method == "predict" and hasattr(model, "classes_"))


def _finite_real(value) -> bool:
    """Whether ``value`` is a real number float64 holds as a finite value."""
    if isinstance(value, Decimal):
        return value.is_finite()
    try:
        return isinstance(value, numbers.Real) and math.isfinite(value)
    except OverflowError:  # integers beyond float64
        return False


# ----------------------------------------------------------------------------- properties
ON_INVALIDS = st.sampled_from(ON_INVALID)


@FUZZ
@given(X=tables({"Drug": SMILES_CELLS}), on_invalid=ON_INVALIDS)
def test_smiles_tables(models, X, on_invalid):
    check_predictions("smiles tables", models["qed"], X, on_invalid)


@FUZZ
@given(X=tables({"Target": PROTEIN_CELLS, "Drug": SMILES_CELLS}), on_invalid=ON_INVALIDS)
def test_protein_and_smiles_tables(models, X, on_invalid):
    check_predictions("protein+smiles tables", models["affinity"], X, on_invalid)


@FUZZ
@given(X=tables({"Drug1": SMILES_CELLS, "Drug2": SMILES_CELLS, "Cell_Line_ID": TEXT_CELLS}), on_invalid=ON_INVALIDS)
def test_drug_pair_tables(models, X, on_invalid):
    check_predictions("drug pair tables", models["combo"], X, on_invalid)


@FUZZ
@given(X=tables({"name": TEXT_CELLS, "dose": TEXT_CELLS}), on_invalid=ON_INVALIDS)
def test_text_and_number_tables(models, X, on_invalid):
    check_predictions("text tables", models["text"], X, on_invalid)


@FUZZ
@given(X=tables({"Drug": SMILES_CELLS}), on_invalid=ON_INVALIDS, method=st.sampled_from(["predict", "predict_proba"]))
def test_classifier_tables(models, X, on_invalid, method):
    check_predictions("classifier tables", models["classifier"], X, on_invalid, method)


@FUZZ
@given(X=st.one_of(ARRAYS, ARRAYS, SPARSE, OBJECTS), model=st.sampled_from(["qed", "text"]), on_invalid=ON_INVALIDS)
def test_arrays_sparse_matrices_and_other_objects(models, X, model, on_invalid):
    check_predictions("arrays and objects", models[model], X, on_invalid)


@FUZZ
@given(X=tables({"Drug": SMILES_CELLS}), on_invalid=ON_INVALIDS)
def test_fit_on_smiles_tables(X, on_invalid):
    fields = {"Drug": "SMILES"}
    invalid = invalid_rows(X, fields, None)
    model = QEDRegressor(on_invalid=on_invalid, **FAST)
    outcome = call("fit on tables", model.fit, X, np.linspace(0, 1, len(X)))
    if isinstance(outcome, Exception):
        check_error(outcome, fields, None, invalid)
        return
    assert invalid is not None and (on_invalid == "nan" or not invalid.any())
    check_predictions("fit on tables", model, X, on_invalid)


@FUZZ
@given(data=st.integers(1, 5).flatmap(lambda n: st.tuples(st.just(n), targets(n))))
def test_regression_targets(data):
    n, y = data
    X = pd.DataFrame({"Drug": SMILES[:n]})
    model = QEDRegressor(**FAST)
    outcome = call("regression targets", model.fit, X, y)
    if isinstance(outcome, Exception):
        check_error(outcome, {}, None, None)
        if isinstance(y, np.ndarray) and y.ndim == 1 and len(y) != n:
            assert str(outcome) == f"X has {n} rows but y has {len(y)}."
        elif isinstance(y, np.ndarray) and y.dtype == np.float64 and y.shape == (n,) and not np.isfinite(y).all():
            rows = ", ".join(str(i) for i in np.flatnonzero(~np.isfinite(y))[:5])
            assert f"y contains NaN or infinity at {(~np.isfinite(y)).sum()} rows: {rows}" in str(outcome)
        return
    accepted = np.asarray(y, dtype=object).ravel()
    assert all(_finite_real(value) for value in accepted), f"fitted on targets that are no finite numbers: {y!r}"
    assert np.isfinite(model.predict(X)).all()


@FUZZ
@given(data=st.integers(1, 5).flatmap(lambda n: st.tuples(st.just(n), labels(n))))
def test_classification_labels(data):
    n, y = data
    X = pd.DataFrame({"Drug": SMILES[:n]})
    model = TagLLMClassifier({"Drug": "SMILES"}, **FAST)
    outcome = call("classification labels", model.fit, X, y)
    if isinstance(outcome, Exception):
        check_error(outcome, {}, None, None)
        return
    accepted = np.asarray(y, dtype=object).ravel()
    assert not any(is_missing(value) for value in accepted), f"fitted on missing labels: {y!r}"
    assert len({isinstance(value, (str, bytes)) for value in accepted}) == 1, f"fitted on mixed labels: {y!r}"
    assert np.isin(model.predict(X), model.classes_).all()


# ----------------------------------------------------------------------------- bugs found by fuzzing (fixed)
def test_fit_with_every_row_invalid_names_the_rows():
    with pytest.raises(InvalidInputError, match=r"Invalid SMILES in column 'Drug' at 2 of 2 rows: 0 \('xx'\)"):
        QEDRegressor(on_invalid="nan", **FAST).fit(pd.DataFrame({"Drug": ["xx", "C1CC"]}), [0.1, 0.2])


def test_dropped_rows_do_not_move_the_target_scale():
    model = QEDRegressor(on_invalid="nan", **FAST)
    with pytest.warns(UserWarning, match="Dropping 1 of 3 rows"):
        model.fit(pd.DataFrame({"Drug": ["CCO", "CCN", "not a molecule"]}), [1.0, 3.0, 1000.0])
    assert (model.y_mean_, model.y_scale_) == (2.0, 1.0)


def test_dropped_rows_add_no_class():
    model = TagLLMClassifier({"Drug": "SMILES"}, on_invalid="nan", **FAST)
    with pytest.warns(UserWarning, match="Dropping 1 of 3 rows"):
        model.fit(pd.DataFrame({"Drug": ["CCO", "CCN", "not a molecule"]}), ["a", "b", "c"])
    assert list(model.classes_) == ["a", "b"]


# ----------------------------------------------------------------------------- long inputs
def test_prompts_over_the_backbones_limit_are_refused_with_their_positions(tiny_llama):
    """Policy: a prompt longer than max_length (default: the backbone's limit) is never truncated; the call
    is refused naming its row's position in X -- also under on_invalid="nan", and after invalid rows."""
    limit = tiny_llama.max_length
    protein = AMINO_ACIDS
    while len(tiny_llama.tokenizer(protein, add_special_tokens=False).input_ids) <= limit:
        protein *= 2
    X = pd.DataFrame({"Target": ["MKT1", PROTEINS[0], protein, PROTEINS[1]]}, index=[10, 11, 12, 13])
    refused = (rf"^1 prompts are longer than the limit of {limit} tokens: rows 2 \(\d+ tokens\)\. Shorten these "
               rf"inputs or raise max_length \(the backbone allows {limit}\)\.$")
    model = ProteinDescriptorRegressor(on_invalid="nan", **FAST)
    with pytest.warns(UserWarning, match="Dropping 1 of 4 rows"), pytest.raises(ValueError, match=refused):
        model.fit(X, [0.0, 1.0, 2.0, 3.0])
    model.fit(pd.DataFrame({"Target": PROTEINS}), np.arange(len(PROTEINS), dtype=float))
    with pytest.raises(ValueError, match=refused):
        model.predict(X)
    assert np.isfinite(model.predict(X.drop(index=[10, 12]))).all()


# ----------------------------------------------------------------------------- failures found by fuzzing, pinned
def test_duplicated_column_names_are_named(models):
    X = pd.DataFrame([["CCO", "CCN"]], columns=["Drug", "Drug"])
    with pytest.raises(ValueError, match=re.escape("X has duplicated column names ['Drug'].")):
        models["qed"].predict(X)  # was: "The truth value of a Series is ambiguous"


def test_the_callers_frame_keeps_its_column_names():
    X = pd.DataFrame({0: ["A549", "MCF7"]})
    TagLLMRegressor(**FAST).fit(X, [0.0, 1.0])
    assert X.columns.tolist() == [0]  # was renamed to ["0"] in place


def test_categorical_columns_are_read(models):
    X = pd.DataFrame({"Drug": pd.Categorical(["CCO", "CCO"])})
    assert np.isfinite(models["qed"].predict(X)).all()  # was: "'Categorical' ... does not support operation 'any'"


@pytest.mark.parametrize("missing", [pd.NA, pd.NaT, np.datetime64("NaT"), Decimal("NaN"), Decimal("sNaN")])
def test_missing_values_of_every_kind_are_invalid_text(models, missing):
    X = pd.DataFrame({"name": ["A549", missing], "dose": [1.0, 2.0]}, dtype=object)
    with pytest.raises(InvalidInputError, match=r"^Invalid values in column 'name' at 1 of 2 rows: 1 \(") as error:
        models["text"].predict(X)  # was written into the prompt as "<NA>", "NaT" or "NaN"
    assert error.value.rows == [1]


@pytest.mark.parametrize("model, column", [("qed", "Drug"), ("text", "name")])
def test_text_utf8_cannot_encode_is_an_invalid_value(models, model, column):
    X = pd.DataFrame({"Drug": ["CCO", "C\ud800"], "name": ["A549", "x\udfff"], "dose": [1, 2]})
    with pytest.raises(InvalidInputError, match=rf"in column '{column}' at 1 of 2 rows: 1 \("):
        models[model].predict(X)  # was a UnicodeEncodeError from RDKit, a TypeError from the tokenizer


def test_smiles_over_the_length_limit_are_refused_unparsed(models):
    X = pd.DataFrame({"Drug": ["CCO", "C" * (MAX_SMILES_LENGTH + 1), " " + "C" * MAX_SMILES_LENGTH]})
    message = (f"Invalid SMILES in column 'Drug' at 1 of 3 rows: 1 ('{'C' * 59}... of {MAX_SMILES_LENGTH + 1} "
               f"characters). SMILES longer than {MAX_SMILES_LENGTH} characters are not parsed. Fix or drop")
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        models["qed"].predict(X)


def test_a_huge_smiles_neither_crashes_nor_hangs_the_process():
    """RDKit's canonical writer recurses per atom: a chain this long overflowed the C stack (SIGSEGV)."""
    code = "from chemtag.validation import canonical_smiles; print(canonical_smiles('C' * 50_000))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert (result.returncode, result.stdout) == (0, "None\n"), result.stderr


def test_rdkit_errors_while_writing_a_smiles_make_it_invalid(monkeypatch):
    def fail(molecule):
        raise ValueError("Too many rings open at once. SMILES cannot be generated.")

    monkeypatch.setattr(Chem, "MolToSmiles", fail)  # RDKit raises this for e.g. "C1CCCC(C1)" * 2000
    assert canonical_smiles("CCO") is None


def test_integers_too_long_to_print_are_invalid_text():
    assert plain_text(10**5000) is None  # was Python's ValueError "Exceeds the limit (4300 digits)"
    assert plain_text(10**40) == str(10**40)


@pytest.mark.parametrize("y, message", [
    ([[1.0], [1.0, 2.0]], "y must be 1-D (one target per row); it could not be read as an array"),
    ([1 + 1j, 2.0], "y must be numeric for regression, got dtype complex128."),
    (["1.5", "2"], "y must be numeric for regression, got dtype <U3."),
    (np.array(["2020-01-01", "2021-01-01"], dtype="datetime64[D]"), "y must be numeric for regression, got dtype"),
    (np.array(["1.5", 2.0], dtype=object), "y must be numeric for regression; 1 rows hold other values: 0 ('1.5')."),
    (np.array([10**400, 1], dtype=object), "y contains NaN or infinity at 1 rows: 0."),
    ([1e200, 2e200], "y is too large to standardise in float64 (its largest magnitude is 2e+200)"),
])
def test_targets_that_are_no_usable_numbers_are_refused(y, message):
    with pytest.raises(ValueError, match=re.escape(message)):  # complex, text, dates: were fitted silently
        QEDRegressor(**FAST).fit(["CCO", "CCN"], y)


@pytest.mark.parametrize("y, message", [
    (pd.Series(["a", None, "b"]), "y has missing labels (None or NaN) at 1 rows: 1."),
    (pd.Series(["a", 1, "b"], dtype=object),
     "Class labels must all be strings or all be numbers; y holds ['number', 'str']."),
])
def test_labels_missing_or_of_mixed_kinds_are_refused(y, message):
    with pytest.raises(ValueError, match=re.escape(message)):  # were numpy's "'<' not supported between ..."
        TagLLMClassifier({"Drug": "SMILES"}, **FAST).fit(pd.DataFrame({"Drug": ["CCO", "CCN", "CCC"]}), y)
