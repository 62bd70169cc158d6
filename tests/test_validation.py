"""Bad input is refused before any compute, with messages that name the rows (asserted word for word)."""

import re

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem, RDLogger

from chemtag import BindingAffinityRegressor, InvalidInputError, QEDRegressor, TagLLMRegressor
from chemtag.validation import canonical_smiles, normalised_protein

FAST = dict(backbone="tiny-llama", max_epochs=1, verbose=0, validation_fraction=0)


@pytest.fixture(scope="module")
def qed_model():
    return QEDRegressor(**FAST).fit(["CCO", "c1ccccc1", "CCN", "CC(=O)O"], [0.4, 0.5, 0.3, 0.2])


def test_smiles_are_canonicalised():
    assert canonical_smiles(" OCC ") == canonical_smiles("CCO") == "CCO"
    assert canonical_smiles("C1CC") is None
    assert canonical_smiles("") is None
    assert canonical_smiles(None) is None


def test_proteins_are_normalised_and_checked_against_the_alphabet():
    assert normalised_protein(" mkt ay\n") == "MKTAY"
    assert normalised_protein("MKTX") is None
    assert normalised_protein("MKTX", alphabet="extended") == "MKTX"
    assert normalised_protein("MK1") is None


def test_invalid_smiles_message_names_rows_and_values(qed_model):
    X = pd.DataFrame({"Drug": ["CCO", "C1CC", "CCN", "not a molecule"]})
    expected = (
        "Invalid SMILES in column 'Drug' at 2 of 4 rows: 1 ('C1CC'), 3 ('not a molecule'). "
        "RDKit could not parse them. Fix or drop these rows, or pass on_invalid='nan' to get NaN predictions for them."
    )
    with pytest.raises(InvalidInputError, match=re.escape(expected)) as error:
        qed_model.predict(X)
    assert error.value.rows == [1, 3]


def test_invalid_message_shows_the_first_five_rows_only(qed_model):
    X = pd.DataFrame({"Drug": ["xx"] * 8})
    with pytest.raises(InvalidInputError, match=re.escape("3 ('xx'), 4 ('xx') and 3 more. RDKit")):
        qed_model.predict(X)


def test_a_number_in_an_array_of_smiles_is_an_invalid_row_even_one_too_large_for_a_float(qed_model):
    X = np.array([[10**400], ["CCO"], [7]], dtype=object)  # pandas 3.0 overflowed reading such arrays
    expected = f"Invalid SMILES in column 'Drug' at 2 of 3 rows: 0 ({'1' + '0' * 59}... of 401 characters), 2 (7). RDKit"
    with pytest.raises(InvalidInputError, match=re.escape(expected)) as error:
        qed_model.predict(X)
    assert error.value.rows == [0, 2]


def test_invalid_protein_message():
    model = BindingAffinityRegressor(**FAST)
    X = pd.DataFrame({"Target": ["MKTAYIAK", "MKT1"], "Drug": ["CCO", "CCN"]})
    expected = (
        "Invalid Protein in column 'Target' at 1 of 2 rows: 1 ('MKT1'). Sequences must use the 20 standard amino-acid "
        "letters (protein_alphabet='extended' also allows BZJUOX). Fix or drop these rows, or pass on_invalid='nan' "
        "to get NaN predictions for them."
    )
    with pytest.raises(InvalidInputError, match=re.escape(expected)):
        model.fit(X, [5.0, 6.0])


def test_y_with_nan_or_infinity_is_refused():
    X = pd.DataFrame({"Drug": ["CCO", "CCN", "CCC"]})
    expected = "y contains NaN or infinity at 2 rows: 0, 2. Remove or impute these rows before fitting."
    with pytest.raises(ValueError, match=re.escape(expected)):
        QEDRegressor(**FAST).fit(X, [np.nan, 0.5, np.inf])


def test_y_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match=re.escape("X has 2 rows but y has 3.")):
        QEDRegressor(**FAST).fit(["CCO", "CCN"], [0.1, 0.2, 0.3])


def test_on_invalid_nan_gives_nan_rows_and_says_how_many(qed_model, caplog):
    model = qed_model.set_params(on_invalid="nan")
    try:
        predictions = model.predict(pd.DataFrame({"Drug": ["CCO", "C1CC", "CCN"]}))
    finally:
        model.set_params(on_invalid="raise")
    assert np.isnan(predictions[1]) and np.isfinite(predictions[[0, 2]]).all()
    assert "1 of 3 rows have invalid input; their predictions are NaN." in caplog.text


def test_on_invalid_nan_drops_invalid_rows_from_training_with_one_warning(caplog):
    with pytest.warns(UserWarning, match="Dropping 1 of 4 rows with invalid input before fitting.") as warned:
        QEDRegressor(on_invalid="nan", **FAST).fit(["CCO", "C1CC", "CCN", "CCC"], [0.1, 0.2, 0.3, 0.4])
    assert len([w for w in warned if "invalid" in str(w.message)]) == 1 and "predictions are NaN" not in caplog.text


def test_empty_input_and_missing_columns_get_clear_messages(qed_model):
    with pytest.raises(ValueError, match="X has no rows: at least one row is required."):
        qed_model.predict(pd.DataFrame({"Drug": []}))
    with pytest.raises(ValueError, match=re.escape("X has no column 'Drug' (needed for SMILES input); its columns are ['smiles']. Pass columns={'Drug': '<your column>'} to use another column.")):
        qed_model.predict(pd.DataFrame({"smiles": ["CCO"]}))


def test_a_single_row_can_be_fitted_and_predicted():
    model = QEDRegressor(**FAST).fit(["CCO"], [0.4])
    assert model.predict(["CCN"]).shape == (1,)


def test_unknown_domain_and_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="Unknown domain 'DNA'"):
        TagLLMRegressor({"x": "DNA"}, **FAST).fit(pd.DataFrame({"x": ["ACGT"]}), [1.0])
    with pytest.raises(ValueError, match="on_invalid must be one of"):
        QEDRegressor(on_invalid="skip", **FAST).fit(["CCO"], [0.4])


@pytest.mark.parametrize("name, value, message", [
    ("lr", -1e-4, "lr must be a finite non-negative number, got -0.0001."),
    ("lr", float("nan"), "lr must be a finite non-negative number, got nan."),
    ("weight_decay", "0.1", "weight_decay must be a finite non-negative number, got '0.1'."),
    ("max_length", 0, "max_length must be a positive integer or None (the backbone's limit), got 0."),
    ("batch_size", 0, "batch_size must be a positive integer, got 0."),
    ("max_epochs", -1, "max_epochs must be a non-negative integer, got -1."),
    ("max_epochs", 2.0, "max_epochs must be a non-negative integer, got 2.0."),
    ("validation_fraction", 1.0, "validation_fraction must be in [0, 1), got 1.0."),
    ("head_training", "closed_form", "head_training must be one of ('joint', 'refit'), got 'closed_form'."),
])
def test_bad_training_parameters_are_refused_before_any_compute(name, value, message, monkeypatch):
    monkeypatch.setattr(QEDRegressor, "_backbone", lambda self: pytest.fail("the backbone was loaded"))
    with pytest.raises(ValueError) as error:
        QEDRegressor(**{**FAST, name: value}).fit(["CCO", "CCN"], [0.4, 0.5])
    assert str(error.value) == message


def test_whitespace_and_case_in_proteins_are_normalised_before_prompting():
    model = BindingAffinityRegressor(**FAST).fit(
        pd.DataFrame({"Target": ["MKTAYIAK", "mkta yiak"], "Drug": ["CCO", "CCO"]}), [5.0, 5.0]
    )
    a, b = model.predict(pd.DataFrame({"Target": ["MKTAYIAK", " mktay iak "], "Drug": ["CCO", "OCC"]}))
    assert a == b


def test_validation_is_silent_and_leaves_rdkit_logging_as_it_was(capfd):
    canonical_smiles("C(C")
    assert "SMILES Parse Error" not in capfd.readouterr().err
    Chem.MolFromSmiles("C(C")
    assert "SMILES Parse Error" in capfd.readouterr().err  # still on: validation did not switch it off
    RDLogger.DisableLog("rdApp.*")
    try:
        canonical_smiles("C(C")
        Chem.MolFromSmiles("C(C")
        assert "SMILES Parse Error" not in capfd.readouterr().err  # still off: validation did not switch it on
    finally:
        RDLogger.EnableLog("rdApp.*")
