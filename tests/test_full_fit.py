"""The resumable full-budget fit (``python -m benchmarks.full_fit``) on the tiny backbone and slices of Davis
and O'Neil."""

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks import full_fit
from chemtag import training


@pytest.fixture
def davis_slice(shared_data, tmp_path):
    """A data folder with 24 training pairs (folds 0-4) and 8 test pairs of Davis, proteins cut to 30 residues."""
    davis = pd.read_csv(shared_data / "davis.csv.gz", dtype={"fold": str})
    davis = pd.concat([davis[davis["fold"] != "test"].sample(24, random_state=0),
                       davis[davis["fold"] == "test"].sample(8, random_state=0)])
    davis["Target"] = davis["Target"].str[:30]
    folder = tmp_path / "data"
    folder.mkdir()
    davis.to_csv(folder / "davis.csv.gz", index=False)
    return folder


@pytest.fixture
def oneil_slice(shared_data, tmp_path):
    """A data folder with the triples of 10 O'Neil drug pairs on 3 cell lines, and the cell lines' expression."""
    oneil = pd.read_csv(shared_data / "oneil.csv.gz")
    pairs = oneil[["Drug1_ID", "Drug2_ID"]].drop_duplicates().head(10)
    oneil = oneil.merge(pairs)
    oneil = oneil[oneil["Cell_Line_ID"].isin(oneil["Cell_Line_ID"].unique()[:3])]
    folder = tmp_path / "oneil-data"
    folder.mkdir()
    oneil.to_csv(folder / "oneil.csv.gz", index=False)
    expression = pd.read_csv(shared_data / "oneil_cell_expression.csv.gz", index_col="SAMPLE_NAME")
    expression.loc[oneil["Cell_Line_ID"].unique()].to_csv(folder / "oneil_cell_expression.csv.gz")
    return folder


def run(davis_slice, checkpoint_dir, *extra):
    return full_fit.main(["--task", "ba-davis", "--data-dir", str(davis_slice), "--backbone", "tiny-llama",
                          "--checkpoint-dir", str(checkpoint_dir), "--max-epochs", "2", "--batch-size", "8", "--fp32", *extra])


def test_fit_trains_on_folds_0_to_4_and_reports_the_test_fold_against_the_mean(davis_slice, tmp_path):
    results = run(davis_slice, tmp_path / "fit", "--out", str(tmp_path / "r.json"))
    assert (results["n_train"], results["n_test"]) == (24, 8)
    assert [record["epoch"] for record in results["history"]] == [0, 1, 2]
    assert set(results["test"]) == {"chemtag", "mean"}
    assert set(results["test"]["chemtag"]) == {"mse", "ci", "pearson", "spearman"}
    assert np.isfinite(results["test"]["chemtag"]["mse"])
    assert json.loads((tmp_path / "r.json").read_text())["test"]["chemtag"]["mse"] == results["test"]["chemtag"]["mse"]


def test_a_second_run_resumes_the_finished_fit_and_sums_the_segments(davis_slice, tmp_path):
    first = run(davis_slice, tmp_path / "fit")
    second = run(davis_slice, tmp_path / "fit")
    assert second["history"] == first["history"]
    assert second["test"]["chemtag"] == first["test"]["chemtag"]
    assert [segment["epochs"] for segment in second["segments"]] == [[0, 1, 2], []]
    assert second["fit_seconds"] == pytest.approx(sum(segment["seconds"] for segment in second["segments"]))


def test_a_killed_segment_counts_until_its_last_checkpoint(davis_slice, tmp_path):
    checkpoint_dir = tmp_path / "fit"
    run(davis_slice, checkpoint_dir)
    segments = json.loads((checkpoint_dir / "segments.json").read_text())
    killed = {"started": "then", "start_time": segments[0]["start_time"] - 100.0, "threads": 1, "seconds": None}
    (checkpoint_dir / "segments.json").write_text(json.dumps([killed]))
    last_checkpoint = max(path.stat().st_mtime for path in checkpoint_dir.glob("epoch-*"))
    closed = full_fit.read_segments(checkpoint_dir)[0]
    assert closed["killed"] and closed["last_epoch"] == 2
    assert closed["seconds"] == pytest.approx(last_checkpoint - killed["start_time"])


def test_a_fit_stopped_by_ctrl_c_writes_no_result_and_the_next_run_resumes_it(davis_slice, tmp_path, monkeypatch):
    steps = []

    def ctrl_c_in_epoch_2(optimizer, lr, warmup_steps):  # 3 steps an epoch: the 5th is in epoch 2
        steps.append(lr)
        if len(steps) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "warm_up", ctrl_c_in_epoch_2)
    stopped = run(davis_slice, tmp_path / "fit", "--out", str(tmp_path / "r.json"))
    assert "test" not in stopped and not (tmp_path / "r.json").exists()
    assert stopped["segments"][0]["interrupted"]
    monkeypatch.undo()

    resumed = run(davis_slice, tmp_path / "fit", "--out", str(tmp_path / "r.json"))
    assert [segment["epochs"] for segment in resumed["segments"]] == [[0, 1], [2]]
    assert [segment["resumed_after"] for segment in resumed["segments"]] == [None, 1]
    assert not resumed["segments"][1]["interrupted"] and (tmp_path / "r.json").exists()


def test_the_kernel_head_on_untrained_tags_is_scored_beside_the_baselines_of_the_same_run(davis_slice, tmp_path):
    results = run(davis_slice, tmp_path / "fit", "--head", "kernel", "--max-epochs", "0", "--baselines",
                  "gbm,random-forest")
    assert [record["epoch"] for record in results["history"]] == [0]
    assert results["settings"]["head"] == "kernel"
    assert set(results["test"]) == {"chemtag", "mean", "gbm", "random-forest"}
    assert set(results["baseline_seconds"]) == {"gbm", "random-forest"}
    assert all(np.isfinite(scores["mse"]) for scores in results["test"].values())


def test_an_unknown_baseline_is_refused_before_fitting(davis_slice, tmp_path):
    with pytest.raises(SystemExit):
        run(davis_slice, tmp_path / "fit", "--baselines", "gbm,xgboost")
    assert not (tmp_path / "fit").exists()


def test_oneil_trains_outside_the_test_fold_and_reports_its_metrics_beside_the_baselines(oneil_slice, tmp_path):
    results = full_fit.main(["--task", "dc-oneil", "--fold", "2", "--data-dir", str(oneil_slice), "--backbone",
                             "tiny-llama", "--checkpoint-dir", str(tmp_path / "fit"), "--max-epochs", "1",
                             "--batch-size", "8", "--fp32", "--baselines", "gbm"])
    oneil = pd.read_csv(oneil_slice / "oneil.csv.gz")
    assert (results["task"], results["fold"]) == ("dc-oneil", 2)
    assert results["n_train"] + results["n_test"] == len(oneil) and 0 < results["n_test"] < len(oneil)
    assert set(results["test"]) == {"chemtag", "mean", "gbm"}
    assert set(results["test"]["chemtag"]) == {"mae", "rmse", "pearson"}
    assert np.isfinite(results["test"]["chemtag"]["mae"])


def test_a_fold_the_task_does_not_have_is_refused_before_fitting(davis_slice, tmp_path):
    with pytest.raises(SystemExit):
        run(davis_slice, tmp_path / "fit", "--fold", "1")
    assert not (tmp_path / "fit").exists()


def test_a_data_folder_without_the_tasks_file_is_refused_with_its_path(tmp_path, capsys):
    with pytest.raises(SystemExit):
        full_fit.main(["--task", "qed", "--data-dir", str(tmp_path), "--checkpoint-dir", str(tmp_path / "fit")])
    assert f"{tmp_path / 'smiles_moses_100k.txt.gz'}, which does not exist" in capsys.readouterr().err
    assert not (tmp_path / "fit").exists()
