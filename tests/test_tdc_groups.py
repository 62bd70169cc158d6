"""TDC benchmark groups: where PyTDC keeps them, reading placed files without PyTDC (always runs) and
through PyTDC's group API and ``tdc.Evaluator`` (where ``tdc`` imports: ``make tdc``), the runner on both."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a folder of the checkout, not installed

from benchmarks import tdc_groups
from benchmarks.features import ExpertFeatures
from benchmarks.methods import METHODS
from benchmarks.metrics import METRICS
from benchmarks.runner import run
from benchmarks.tasks import BINDINGDB_PATENT, BUDGETS, DRUGCOMB_CSS, TASKS, TDC_TASKS, Rows

TINY_BUDGET = replace(BUDGETS["quick"], name="tiny", forest_trees=5)  # mean and a random forest run here
ALL_ROWS = Rows(None, None)  # the 24 train_val and 10 test rows of the tdc_data fixture
needs_pytdc = pytest.mark.skipif(importlib.util.find_spec("tdc") is None, reason="PyTDC is not installed (make tdc)")


@pytest.fixture
def no_pytdc(monkeypatch):
    """Read and score as where PyTDC is not installed, whether or not it is."""
    monkeypatch.setattr(tdc_groups, "pytdc_version", lambda: None)


def placed(benchmark: tdc_groups.TdcBenchmark, root: Path, part: str) -> pd.DataFrame:
    path = benchmark.files(root)[part]
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_pickle(path)


def run_mean_and_forest(task: str, data_dir: Path, results_dir: Path) -> pd.DataFrame:
    return run(TASKS[task], TINY_BUDGET, [METHODS["mean"], METHODS["random-forest"]], rows=ALL_ROWS, data_dir=data_dir,
               results_dir=results_dir, img_dir=results_dir, log=lambda *_: None)


def test_tdc_files_are_where_pytdc_keeps_its_groups(tmp_path):
    assert BINDINGDB_PATENT.files(tmp_path) == {
        "train_val": tmp_path / "dti_dg_group" / "bindingdb_patent" / "train_val.csv",
        "test": tmp_path / "dti_dg_group" / "bindingdb_patent" / "test.csv"}
    assert DRUGCOMB_CSS.files(tmp_path) == {
        "train_val": tmp_path / "drugcombo_group" / "drugcomb_css" / "train_val.pkl",
        "test": tmp_path / "drugcombo_group" / "drugcomb_css" / "test.pkl"}


# ------------------------------------------------------------------------------------- without PyTDC
@pytest.mark.parametrize("task, tdc_benchmark", [("tdc-bindingdb-patent", BINDINGDB_PATENT),
                                             ("tdc-drugcomb-css", DRUGCOMB_CSS)])
def test_tdc_task_without_pytdc_trains_on_train_val_and_tests_on_test(task, tdc_benchmark, no_pytdc, tdc_data):
    frame = TASKS[task].read(tdc_data)
    split = TASKS[task].split(frame, 0, 0)
    assert split.train.tolist() == list(range(24)) and split.test.tolist() == list(range(24, 34))
    for part, rows in [("train_val", split.train), ("test", split.test)]:
        assert np.array_equal(TASKS[task].label(frame.iloc[rows]), placed(tdc_benchmark, tdc_data, part)["Y"])
    assert set(TASKS[task].inputs) <= set(frame.columns)


def test_tdc_drugcomb_cell_line_features_become_one_vector_per_row(no_pytdc, tdc_data):
    frame = TASKS["tdc-drugcomb-css"].read(tdc_data)
    given = placed(DRUGCOMB_CSS, tdc_data, "train_val")
    assert all(vector.dtype == np.float32 and vector.shape == (9,) for vector in frame["CellLine"])
    assert np.allclose(frame["CellLine"].iloc[0], np.concatenate(given["CellLine"].iloc[0]))
    features = ExpertFeatures(TASKS["tdc-drugcomb-css"].inputs).transform(frame)
    assert features.shape == (34, 1024 + 9)
    assert np.allclose(features[:, -9:], np.stack(frame["CellLine"].tolist()))


def test_tdc_scoring_without_pytdc_is_the_suites_own(no_pytdc):
    for task in TDC_TASKS.values():
        scoring = task.scoring()
        assert scoring.source == tdc_groups.FILES_SOURCE
        assert all(scoring.metrics[name] is METRICS[name] for name in task.metrics)


def test_tdc_files_missing_without_pytdc_raise_naming_them_and_the_install(no_pytdc, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"bindingdb_patent(.|\n)*train_val\.csv(.|\n)*make tdc"):
        TASKS["tdc-bindingdb-patent"].read(tmp_path)


@pytest.mark.parametrize("task, tdc_benchmark, loss", [("tdc-bindingdb-patent", BINDINGDB_PATENT, "mse"),
                                                   ("tdc-drugcomb-css", DRUGCOMB_CSS, "mae")])
def test_tdc_runner_without_pytdc_scores_placed_files_and_records_the_source(task, tdc_benchmark, loss, no_pytdc,
                                                                             tdc_data, tmp_path):
    results = run_mean_and_forest(task, tdc_data, tmp_path)
    assert (results["source"] == tdc_groups.FILES_SOURCE).all()
    assert (results["n_train"] == 24).all() and (results["n_test"] == 10).all()
    train_y, test_y = (placed(tdc_benchmark, tdc_data, part)["Y"].to_numpy() for part in ("train_val", "test"))
    mean_loss = results.set_index(["method", "metric"]).loc[("mean", loss), "value"]
    assert mean_loss == pytest.approx(METRICS[loss](test_y, np.full(10, train_y.mean())))
    assert set(pd.read_csv(tmp_path / f"{task}-tiny.csv")["source"]) == {tdc_groups.FILES_SOURCE}


@pytest.fixture
def uncached_pytdc_version():
    """:func:`~benchmarks.tdc_groups.pytdc_version` asked afresh in the test, and again after it."""
    tdc_groups.pytdc_version.cache_clear()
    yield tdc_groups.pytdc_version
    tdc_groups.pytdc_version.cache_clear()


def test_pytdc_installed_but_not_importing_raises_with_the_install_hint(uncached_pytdc_version, monkeypatch):
    def broken(name: str):
        raise ModuleNotFoundError("No module named 'fuzzywuzzy'")

    monkeypatch.setattr(tdc_groups.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(tdc_groups.importlib, "import_module", broken)
    with pytest.raises(ImportError, match=r"installed but does not import(.|\n)*fuzzywuzzy(.|\n)*make tdc"):
        uncached_pytdc_version()


# ---------------------------------------------------------------------------------------- with PyTDC
@needs_pytdc
def test_pytdc_group_api_reads_the_same_rows_as_the_files(tdc_data, monkeypatch):
    with_pytdc = {task: TASKS[task].read(tdc_data) for task in TDC_TASKS}
    monkeypatch.setattr(tdc_groups, "pytdc_version", lambda: None)
    for task, frame in with_pytdc.items():
        without = TASKS[task].read(tdc_data)
        columns = [c for c in without.columns if c != "CellLine"]
        pd.testing.assert_frame_equal(frame[columns], without[columns])
        if "CellLine" in frame:
            assert np.array_equal(np.stack(frame["CellLine"].tolist()), np.stack(without["CellLine"].tolist()))


@needs_pytdc
@pytest.mark.parametrize("tdc_benchmark, metric", [(BINDINGDB_PATENT, "pearson"), (DRUGCOMB_CSS, "mae")])
def test_pytdc_evaluator_scores_the_groups_metric(tdc_benchmark, metric):
    scoring = tdc_groups.scoring(tdc_benchmark)
    assert scoring.source == f"pytdc-{tdc_groups.pytdc_version()}"
    assert scoring.metrics[metric] is not METRICS[metric]
    y_true, y_pred = np.array([1.0, 2.0, 4.0, 3.0]), np.array([1.5, 1.0, 3.0, 3.5])
    assert scoring.metrics[metric](y_true, y_pred) == pytest.approx(METRICS[metric](y_true, y_pred))


@needs_pytdc
@pytest.mark.parametrize("task", list(TDC_TASKS))
def test_pytdc_runs_the_task_end_to_end_as_the_files_do(task, tdc_data, tmp_path, monkeypatch):
    with_pytdc = run_mean_and_forest(task, tdc_data, tmp_path / "pytdc")
    assert (with_pytdc["source"] == f"pytdc-{tdc_groups.pytdc_version()}").all()
    monkeypatch.setattr(tdc_groups, "pytdc_version", lambda: None)
    without = run_mean_and_forest(task, tdc_data, tmp_path / "files")
    defined = without["value"].notna()  # TDC's Pearson of the mean's constant prediction is a rounding residue
    assert np.allclose(with_pytdc["value"][defined], without["value"][defined])
    assert set(without.loc[~defined, "method"]) <= {"mean"} and defined.sum() >= 4


@needs_pytdc
def test_pytdc_offline_without_files_raises_a_clear_error(tmp_path, monkeypatch):
    import requests
    from tdc.utils import load

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'dataverse.harvard.edu'")

    monkeypatch.setattr(load, "dataverse_download", offline)
    with pytest.raises(FileNotFoundError, match=r"not in(.|\n)*could not download(.|\n)*dataverse"):
        TASKS["tdc-drugcomb-css"].read(tmp_path)
