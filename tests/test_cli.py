"""``chemtag fit`` and ``chemtag predict`` round trip, with the estimators' validation messages."""

import pandas as pd
import pytest

from chemtag.cli import main
from chemtag.persistence import load_estimator

SMILES = ["CCO", "c1ccccc1", "CCN", "CC(=O)O", "CCCC", "c1ccncc1"]


@pytest.fixture
def train_csv(tmp_path):
    path = tmp_path / "train.csv"
    pd.DataFrame({"smiles": SMILES, "Y": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}).to_csv(path, index=False)
    return path


def test_fit_then_predict_writes_predictions(tmp_path, train_csv, capsys):
    model = tmp_path / "model"
    assert main(["fit", str(train_csv), "--task", "qed", "--column", "Drug=smiles", "-o", str(model),
                 "--backbone", "tiny-llama", "--max-epochs", "1", "--quiet"]) == 0
    assert "saved QEDRegressor" in capsys.readouterr().out
    test_csv = tmp_path / "test.csv"
    pd.DataFrame({"smiles": ["CCO", "C1CC"]}).to_csv(test_csv, index=False)
    assert main(["predict", str(model), str(test_csv), "-o", str(tmp_path / "preds.csv"), "--on-invalid", "nan"]) == 0
    predictions = pd.read_csv(tmp_path / "preds.csv")
    assert list(predictions.columns) == ["smiles", "prediction"]
    assert predictions["prediction"].isna().tolist() == [False, True]


def test_invalid_rows_stop_predict_with_the_estimator_message(tmp_path, train_csv, capsys):
    model = tmp_path / "model"
    main(["fit", str(train_csv), "--task", "qed", "--column", "Drug=smiles", "-o", str(model),
          "--backbone", "tiny-llama", "--max-epochs", "1", "--quiet"])
    test_csv = tmp_path / "test.csv"
    pd.DataFrame({"smiles": ["CCO", "C1CC"]}).to_csv(test_csv, index=False)
    assert main(["predict", str(model), str(test_csv), "-o", str(tmp_path / "preds.csv")]) == 2
    assert "chemtag predict: error: Invalid SMILES in column 'smiles' at 1 of 2 rows: 1 ('C1CC')." in capsys.readouterr().err


def test_fit_options_reach_the_estimator_and_bad_values_get_its_message(tmp_path, train_csv, capsys):
    fit = ["fit", str(train_csv), "--task", "qed", "--column", "Drug=smiles", "--backbone", "tiny-llama",
           "--max-epochs", "1", "--quiet"]
    assert main([*fit, "--head-training", "refit", "-o", str(tmp_path / "model")]) == 0
    assert load_estimator(tmp_path / "model").head_training == "refit"
    assert main([*fit, "--head-training", "ridge", "-o", str(tmp_path / "other")]) == 2
    message = "chemtag fit: error: head_training must be one of ('joint', 'refit'), got 'ridge'."
    assert message in capsys.readouterr().err


def test_fit_with_the_kernel_head_saves_it_and_refuses_it_for_classification(tmp_path, train_csv, capsys):
    fit = ["fit", str(train_csv), "--column", "Drug=smiles", "--backbone", "tiny-llama", "--max-epochs", "1", "--quiet"]
    assert main([*fit, "--task", "qed", "--head", "kernel", "-o", str(tmp_path / "model")]) == 0
    assert load_estimator(tmp_path / "model").head_["kernel.train_features"].shape[0] == len(SMILES)
    assert main([*fit, "--task", "qed", "--head", "kernel", "--kernel-landmarks", "5", "-o", str(tmp_path / "few")]) == 0
    assert load_estimator(tmp_path / "few").head_["kernel.train_features"].shape[0] == 5
    assert main([*fit, "--task", "classification", "--head", "kernel", "-o", str(tmp_path / "other")]) == 2
    assert "chemtag fit: error: --head applies to the regression tasks, not 'classification'." in capsys.readouterr().err


def test_missing_target_column_is_a_clear_error(tmp_path, train_csv, capsys):
    code = main(["fit", str(train_csv), "--task", "qed", "--target", "QED", "-o", str(tmp_path / "m")])
    assert code == 2
    assert "has no target column 'QED'; its columns are ['smiles', 'Y']. Use --target." in capsys.readouterr().err


def test_help_explains_the_columns_of_each_task(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "binding-affinity     columns Target (protein sequence) and Drug (SMILES)" in capsys.readouterr().out
