"""The benchmark suite: splits keep test rows (and test drug pairs) out of training, metrics, features,
the runner end to end on tiny data with the tiny backbone, and the command line."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a folder of the checkout, not installed

from benchmarks import __main__ as cli
from benchmarks import chemprop_baseline, kv_store_speed, prefix_pieces
from benchmarks.chemprop_baseline import ChempropError, ChempropRegressor, ensure_environment, train_command
from benchmarks.features import ExpertFeatures, protein_composition
from benchmarks.methods import METHODS, Context, Method
from benchmarks.metrics import concordance_index, pearson
from benchmarks.neural import DeepDTARegressor, DeepSynergyRegressor
from benchmarks.peft_baselines import PeftRegressor, plain_prompts
from benchmarks.report import merge_into
from benchmarks.runner import cpu_seconds, load_data, resolve_methods, results_stem, run
from benchmarks.splits import Split, davis_setting1, pair_folds, pair_split, random_split, subsample, unordered_pairs
from benchmarks.tasks import BUDGETS, TASKS, TDC_TASKS, Budget, Rows, Task
from chemtag.backbones import load_backbone
from chemtag.templates import Template
from chemtag.training import validation_split

TINY_BUDGET = Budget("tiny", tag_epochs=1, peft_epochs=1, neural_epochs=2, boosting_rounds=5, forest_trees=5, batch_size=4)
TINY_ROWS = Rows(12, 6, max_residues=30)
DRUGS = ["CCO", "c1ccccc1O", "CC(=O)O", "CCN", "OCC(O)CO", "CC(C)O"]


def synergy_table(n_rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """Random synergy rows in which many drug pairs appear in both orders."""
    rng = np.random.default_rng(seed)
    first, second = (rng.integers(0, len(DRUGS), n_rows) for _ in range(2))
    keep = first != second
    return pd.DataFrame({
        "Drug1_ID": [f"d{i}" for i in first[keep]], "Drug2_ID": [f"d{i}" for i in second[keep]],
        "Drug1": [DRUGS[i] for i in first[keep]], "Drug2": [DRUGS[i] for i in second[keep]],
        "Cell_Line_ID": rng.choice(["c0", "c1", "c2"], keep.sum()), "Y": rng.normal(size=keep.sum()),
    })


# ---------------------------------------------------------------------------------------------- splits
def test_split_refuses_a_row_on_both_sides():
    with pytest.raises(ValueError, match="both train and test"):
        Split(np.array([0, 1, 2]), np.array([2, 3]))


def test_davis_setting1_trains_on_folds_0_to_4_and_tests_on_test():
    folds = pd.Series(["0", "test", "4", "2", "test", "1", "3", "other"])
    split = davis_setting1(folds)
    assert split.train.tolist() == [0, 2, 3, 5, 6]
    assert split.test.tolist() == [1, 4]


def test_unordered_pairs_ignore_the_order():
    assert unordered_pairs(["a", "b", "a"], ["b", "a", "c"]).tolist() == ["a|b", "a|b", "a|c"]


@pytest.mark.parametrize("seed", [0, 1])
def test_pair_folds_put_each_unordered_pair_in_one_fold(seed):
    table = synergy_table(seed=seed)
    folds = pair_folds(table["Drug1_ID"], table["Drug2_ID"], n_folds=5, seed=seed)
    pairs = unordered_pairs(table["Drug1_ID"], table["Drug2_ID"])
    assert (pd.Series(folds).groupby(pairs).nunique() == 1).all()
    assert set(folds) == set(range(5))
    both_orders = set(zip(table["Drug1_ID"], table["Drug2_ID"])) & set(zip(table["Drug2_ID"], table["Drug1_ID"]))
    assert both_orders, "the table must hold pairs in both orders for this test to mean anything"


@pytest.mark.parametrize("fold", range(5))
def test_pair_split_shares_no_unordered_pair_between_train_and_test(fold):
    table = synergy_table()
    split = pair_split(table["Drug1_ID"], table["Drug2_ID"], fold=fold)
    pairs = unordered_pairs(table["Drug1_ID"], table["Drug2_ID"])
    assert not set(pairs[split.train]) & set(pairs[split.test])
    assert len(split.train) + len(split.test) == len(table)


def test_pair_split_refuses_an_unknown_fold():
    table = synergy_table()
    with pytest.raises(ValueError, match="fold"):
        pair_split(table["Drug1_ID"], table["Drug2_ID"], fold=5)


def test_random_split_is_seeded_disjoint_and_complete():
    split = random_split(50, 0.2, seed=3)
    assert len(split.test) == 10 and sorted([*split.train, *split.test]) == list(range(50))
    assert random_split(50, 0.2, seed=3).test.tolist() == split.test.tolist()
    assert random_split(50, 0.2, seed=4).test.tolist() != split.test.tolist()


def test_subsample_draws_each_side_from_itself_only():
    split = Split(np.arange(0, 100), np.arange(100, 130))
    small = subsample(split, 10, 5, seed=0)
    assert len(small.train) == 10 and set(small.train) <= set(split.train)
    assert len(small.test) == 5 and set(small.test) <= set(split.test)
    assert subsample(split, None, 1000).test.tolist() == split.test.tolist()


def test_davis_split_of_the_shared_data_is_deepdta_setting1(shared_data):
    frame = TASKS["ba-davis"].read(shared_data)
    split = TASKS["ba-davis"].split(frame, 0, 0)
    assert (frame["fold"].iloc[split.test] == "test").all()
    assert frame["fold"].iloc[split.train].isin(list("01234")).all()
    assert len(split.train) + len(split.test) == len(frame)


@pytest.mark.parametrize("fold", [0, 3])
def test_oneil_folds_of_the_shared_data_share_no_unordered_pair(shared_data, fold):
    frame = TASKS["dc-oneil"].read(shared_data)
    split = TASKS["dc-oneil"].split(frame, fold, 0)
    pairs = unordered_pairs(frame["Drug1_ID"], frame["Drug2_ID"])
    assert not set(pairs[split.train]) & set(pairs[split.test])
    assert 0.15 < len(split.test) / len(frame) < 0.25


# --------------------------------------------------------------------------------------------- metrics
def test_concordance_index_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 60).astype(float), rng.integers(0, 4, 60).astype(float)  # ties on both sides
    pairs = [(i, j) for i, j in itertools.permutations(range(60), 2) if y[i] > y[j]]
    expected = sum(1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0 for i, j in pairs) / len(pairs)
    assert concordance_index(y, p, block=7) == pytest.approx(expected)
    assert concordance_index(y, y) == 1.0


def test_pearson_is_nan_for_a_constant_prediction():
    assert np.isnan(pearson(np.arange(5.0), np.full(5, 2.0)))


# -------------------------------------------------------------------------------------------- features
def test_protein_composition_is_fractions_of_residues_and_dipeptides():
    features = protein_composition(["AACA"])
    assert features.shape == (1, 420)
    assert features[0, :20].sum() == pytest.approx(1) and features[0, 20:].sum() == pytest.approx(1)
    assert features[0, 0] == pytest.approx(0.75)  # A


def test_expert_features_of_a_drug_pair_do_not_depend_on_its_order():
    table = synergy_table(20)
    expression = pd.DataFrame(np.eye(3), index=["c0", "c1", "c2"])
    features = ExpertFeatures(TASKS["dc-oneil"].inputs, expression)
    swapped = table.rename(columns={"Drug1": "Drug2", "Drug2": "Drug1"})
    assert np.array_equal(features.transform(table), features.transform(swapped))


def test_deepsynergy_predicts_the_same_for_both_drug_orders():
    table = synergy_table(60)
    expression = pd.DataFrame(np.random.default_rng(0).normal(size=(3, 4)), index=["c0", "c1", "c2"])
    model = DeepSynergyRegressor(expression, hidden=(16,), epochs=2).fit(table, table["Y"])
    swapped = table.rename(columns={"Drug1": "Drug2", "Drug2": "Drug1"})
    assert np.allclose(model.predict(table), model.predict(swapped))


@pytest.mark.parametrize("make", [
    lambda: DeepSynergyRegressor(pd.DataFrame(np.eye(3), index=["c0", "c1", "c2"]), hidden=(16, 8), epochs=2),
    lambda: DeepDTARegressor(protein_length=32, filters=4, epochs=2),
], ids=["deepsynergy", "deepdta"])
def test_neural_experts_fit_the_same_whatever_ran_before(make):
    table = synergy_table(40).assign(Drug=lambda t: t["Drug1"], Target="MKVLAAGIVAL")  # columns for both
    torch.manual_seed(1)
    first = make().fit(table, table["Y"]).predict(table)
    torch.rand(100)  # the global generator moves on, as other methods' fits move it in a benchmark run
    assert np.array_equal(make().fit(table, table["Y"]).predict(table), first)


def test_plain_prompts_fill_fields_and_drop_tags():
    template = TASKS["ba-davis"].estimator().template
    prompts = plain_prompts(template, pd.DataFrame({"Target": ["MKV"], "Drug": ["CCO"]}))
    assert prompts == ["Input: The protein sequence is MKV. The SMILES of the drug is CCO. "
                       "Output: The binding affinity is"]


def peft_rows() -> tuple[pd.DataFrame, np.ndarray]:
    """20 molecules with a target that depends on the SMILES."""
    smiles = ["CCO", "c1ccccc1O", "CC(=O)O", "CCN", "OCC(O)CO", "CC(C)O", "CCCCCC", "c1ccncc1", "CC(N)C(=O)O", "O=C=O"]
    X = pd.DataFrame({"Drug": smiles * 2})
    return X, X["Drug"].str.len().to_numpy(float) * 0.3 + np.random.default_rng(0).normal(size=len(X))


def peft_regressor(method: str = "lora", **kwargs) -> PeftRegressor:
    pytest.importorskip("peft")
    return PeftRegressor(TASKS["qed"].estimator().template, "tiny-llama", method, batch_size=4, **kwargs)


@pytest.mark.parametrize("method", ["prompt-tuning", "lora"])
def test_peft_history_starts_at_the_probe_epoch_0_with_validation_losses(method):
    X, y = peft_rows()
    history = peft_regressor(method, epochs=2, validation_fraction=0.25).fit(X, y).history_
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(np.isfinite(h["valid_loss"]) for h in history)
    assert "valid_loss" not in peft_regressor(method, epochs=1, validation_fraction=0).fit(X, y).history_[0]


@pytest.mark.parametrize("method", ["prompt-tuning", "lora"])
def test_peft_head_at_learning_rate_0_is_the_probe_of_epoch_0(method):
    X, y = peft_rows()
    probe = peft_regressor(method, epochs=0).fit(X, y).predict(X)
    trained = peft_regressor(method, epochs=2, lr=0.0).fit(X, y).predict(X)
    assert np.allclose(trained, probe, atol=1e-6)
    assert probe.std() > 0, "the probe must be fitted: a zero head predicts the mean for every row"


def test_lora_s_epoch_0_reads_the_frozen_states_that_the_untrained_lora_model_computes():
    X, y = peft_rows()
    model = peft_regressor("lora", epochs=0).fit(X, y)
    prompts = plain_prompts(model.template, X)
    backbone = load_backbone("tiny-llama")
    tokens = [np.asarray(ids) for ids in backbone.tokenizer(prompts)["input_ids"]]
    shared = model._untrained_readouts(backbone, prompts, tokens)
    computed = model._readouts(tokens, np.arange(len(tokens)))  # the peft model, never trained: epochs=0
    assert torch.allclose(shared, computed, atol=1e-5)


def test_peft_keeps_the_epoch_of_least_validation_loss_and_stops_after_patience():
    X, y = peft_rows()
    model = peft_regressor(epochs=6, lr=1e-2, validation_fraction=0.25, patience=1).fit(X, y)
    losses = [h["valid_loss"] for h in model.history_]
    stale = [i for i in range(1, len(losses)) if losses[i] >= min(losses[:i])]
    assert stale == [len(losses) - 1], "patience 1 stops at the first epoch without improvement"
    assert 0 < np.argmin(losses) < len(losses) - 1, "the best epoch must be neither the probe nor the last"
    _, valid = validation_split(len(X), 0.25, np.random.default_rng(0))
    residuals = (model.predict(X.iloc[valid]) - y[valid]) / model.y_scale_
    assert np.mean(residuals ** 2) == pytest.approx(min(losses), rel=1e-4)


# -------------------------------------------------------------------------------------------- chemprop
def fake_chemprop(tmp_path: Path, body: str) -> Path:
    """An executable Python script standing in for ``chemprop``; ``body`` sees its arguments as ``args``."""
    script = tmp_path / "chemprop"
    script.write_text(f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n{body}\n")
    script.chmod(0o755)
    return script


ECHO_CHEMPROP = """
import shutil, pandas as pd
value = lambda flag: args[args.index(flag) + 1]
if args[0] == "train":
    shutil.copy(value("--data-path"), {seen!r})
else:
    table = pd.read_csv(value("--test-path"))
    table.assign(y=table["smiles"].str.len()).to_csv(value("--output"), index=False)
"""  # train: keeps a copy of the training CSV; predict: the length of each SMILES


def options(command: list[str]) -> dict[str, list[str]]:
    """Each ``--flag`` of a command line with the values that follow it."""
    flags = [i for i, part in enumerate(command) if part.startswith("--")]
    return {command[i]: command[i + 1:j] for i, j in zip(flags, [*flags[1:], len(command)])}


def test_chemprop_train_command_is_seeded_cpu_regression_without_a_test_split(tmp_path):
    command = train_command(Path("chemprop"), tmp_path / "train.csv", tmp_path / "model", epochs=30,
                            validation_fraction=0.1, seed=7)
    given = options(command)
    assert command[:2] == ["chemprop", "train"]
    assert given["--epochs"] == ["30"] and given["--task-type"] == ["regression"]
    assert given["--data-seed"] == given["--pytorch-seed"] == ["7"]
    assert given["--accelerator"] == ["cpu"]
    assert [float(x) for x in given["--split-sizes"]] == [0.9, 0.1, 0.0]
    assert given["--warmup-epochs"] == ["2"]


def test_chemprop_warmup_is_shorter_than_a_short_training():
    assert options(train_command(Path("chemprop"), Path("a.csv"), Path("m"), 2, 0.1, 0))["--warmup-epochs"] == ["1"]


def test_chemprop_regressor_trains_on_the_given_rows_and_reads_predictions_back_in_order(tmp_path):
    seen = tmp_path / "seen.csv"
    executable = fake_chemprop(tmp_path, ECHO_CHEMPROP.format(seen=str(seen)))
    X_train, y_train = pd.DataFrame({"Drug": DRUGS[:4]}), np.array([0.1, 0.2, 0.3, 0.4])
    model = ChempropRegressor(epochs=3, executable=executable).fit(X_train, y_train)
    handed = pd.read_csv(seen)
    assert handed["smiles"].tolist() == DRUGS[:4] and np.allclose(handed["y"], y_train)
    X_test = pd.DataFrame({"Drug": ["CCCCCCCC", "C", "CCO"]})
    assert model.predict(X_test).tolist() == [8.0, 1.0, 3.0]


def test_chemprop_failure_raises_with_the_tail_of_its_stderr(tmp_path):
    noisy = "sys.stderr.write(''.join(f'line {i}\\n' for i in range(100)) + 'RuntimeError: no molecules\\n')"
    executable = fake_chemprop(tmp_path, f"{noisy}\nsys.exit(3)")
    with pytest.raises(ChempropError, match="train chemprop.*exit status 3") as raised:
        ChempropRegressor(executable=executable).fit(pd.DataFrame({"Drug": DRUGS}), np.zeros(len(DRUGS)))
    assert "RuntimeError: no molecules" in str(raised.value) and "line 99" in str(raised.value)
    assert "line 0\n" not in str(raised.value)


def test_chemprop_environment_that_cannot_be_created_raises_and_stays_incomplete(tmp_path):
    offline = fake_chemprop(tmp_path, "sys.stderr.write('ERROR: No matching distribution found for chemprop\\n')\n"
                                      "sys.exit(1)")
    with pytest.raises(ChempropError, match="virtual environment(.|\n)*No matching distribution"):
        ensure_environment(tmp_path / "env", python=offline)
    assert not chemprop_baseline.environment_ready(tmp_path / "env")


@pytest.mark.skipif(not chemprop_baseline.environment_ready(),
                    reason="chemprop's environment is not created (python -m benchmarks run --methods chemprop)")
def test_chemprop_fits_and_predicts_qed_of_50_smiles(shared_data):
    data = load_data(TASKS["qed"], Rows(50, 10), data_dir=shared_data)
    model = ChempropRegressor(epochs=3).fit(data.X_train, data.y_train)
    predictions = model.predict(data.X_test)
    assert predictions.shape == (10,) and np.isfinite(predictions).all()
    assert [h["epoch"] for h in model.history_] == [1, 2, 3]
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["valid_loss"]) for h in model.history_)


# ---------------------------------------------------------------------------------------------- runner
class Spy:
    """A regressor that remembers what it was fitted on and asked to predict."""

    seen: dict[str, pd.DataFrame] = {}

    def fit(self, X, y):
        Spy.seen["fit"] = X.copy()
        return self

    def predict(self, X):
        Spy.seen["predict"] = X.copy()
        return np.zeros(len(X))


def numbered_task(n_rows: int = 40) -> Task:
    """A task whose single input is the row number, split at random."""
    return Task("numbered", "row numbers", {"row": "molecule"}, object, ("mse",),
                read=lambda data_dir: pd.DataFrame({"row": np.arange(n_rows)}),
                split=lambda frame, fold, seed: random_split(len(frame), 0.25, seed),
                label=lambda frame: frame["row"].to_numpy(float), quick=Rows(None, None))


def test_runner_fits_on_training_rows_only_and_predicts_every_test_row(tmp_path):
    task = numbered_task()
    spy = Method("spy", "remembers its inputs", lambda context: Spy())
    run(task, TINY_BUDGET, [spy], seed=5, results_dir=tmp_path, img_dir=tmp_path, log=lambda *_: None)
    split = random_split(40, 0.25, 5)
    assert sorted(Spy.seen["fit"]["row"]) == split.train.tolist()
    assert sorted(Spy.seen["predict"]["row"]) == split.test.tolist()


def test_an_interrupted_run_keeps_the_methods_that_ended(tmp_path):
    class Interrupted(Spy):
        def fit(self, X, y):
            raise KeyboardInterrupt

    methods = [METHODS["mean"], Method("interrupted", "stops the run", lambda context: Interrupted())]
    with pytest.raises(KeyboardInterrupt):
        run(numbered_task(), TINY_BUDGET, methods, results_dir=tmp_path, img_dir=tmp_path, log=lambda *_: None)
    stem = results_stem(numbered_task(), TINY_BUDGET, Rows(None, None))
    assert set(pd.read_csv(tmp_path / f"{stem}.csv")["method"]) == {"mean"}
    assert "| mean |" in (tmp_path / f"{stem}.md").read_text()
    assert (tmp_path / f"{stem}-scatter.png").stat().st_size > 0  # plots are drawn once, as the run stops


def test_runner_gives_synergy_methods_no_test_drug_pair(shared_data, tmp_path):
    spy = Method("spy", "remembers its inputs", lambda context: Spy())
    run(TASKS["dc-oneil"], TINY_BUDGET, [spy], rows=Rows(400, 100), fold=2, data_dir=shared_data,
        results_dir=tmp_path, img_dir=tmp_path, log=lambda *_: None)
    fitted, predicted = (set(unordered_pairs(Spy.seen[k]["Drug1"], Spy.seen[k]["Drug2"])) for k in ("fit", "predict"))
    assert fitted and predicted and not fitted & predicted


def test_chemtag_reads_the_davis_kinase_with_an_unknown_residue(shared_data):
    davis = TASKS["ba-davis"].read(shared_data)
    with_x = davis[davis["Target"].str.contains("X")].head(3)
    assert len(with_x), "Davis holds a kinase sequence with an X"
    context = Context(TASKS["ba-davis"], TINY_BUDGET, Rows(), 0, "tiny-llama", shared_data)
    estimator = METHODS["chemtag"].build(context)
    assert estimator.protein_alphabet == "extended"
    estimator.set_params(max_epochs=1, validation_fraction=0).fit(with_x[["Target", "Drug"]], with_x["Y"])


@pytest.mark.parametrize("task", ["ba-davis", "dc-oneil", "qed", "descriptor"])
def test_the_no_domain_tag_arm_writes_the_preset_template_without_its_domain_tags(task):
    context = Context(TASKS[task], TINY_BUDGET, Rows(), 0, "tiny-llama", Path("."))
    preset, arm = METHODS["chemtag"].build(context), METHODS["chemtag-no-domain-tags"].build(context)
    assert set(arm.domains.values()) == {"Text"} and set(arm.domains) == set(preset.domains)
    removed = {f"<{domain}> " for domain in preset.domains.values() if domain != "Text"}
    expected = preset.template
    for tag in removed:
        expected = expected.replace(tag, "")
    assert arm.template == expected and expected != preset.template
    assert Template.parse(arm.template).function_tag == Template.parse(preset.template).function_tag


def test_load_data_crops_proteins_and_labels_what_is_kept(shared_data):
    data = load_data(TASKS["descriptor"], Rows(8, 4, max_residues=25), data_dir=shared_data)
    assert data.X_train["Target"].str.len().max() <= 25
    assert np.allclose(data.y_train, TASKS["descriptor"].label(data.X_train))


def runs_here(method: Method) -> bool:
    """Installed, and not waiting for a separate environment that the test suite must not create."""
    return not method.missing() and (method.environment_ready is None or method.environment_ready())


@pytest.mark.parametrize("task", list(TASKS))
def test_every_method_runs_end_to_end_with_the_tiny_backbone(task, request, tmp_path):
    data_dir = request.getfixturevalue("tdc_data" if task in TDC_TASKS else "shared_data")
    methods = [m for m in METHODS.values() if runs_here(m)]
    results = run(TASKS[task], TINY_BUDGET, methods, rows=TINY_ROWS, backbone="tiny-llama", data_dir=data_dir,
                  results_dir=tmp_path / "results", img_dir=tmp_path / "img", log=lambda *_: None)
    ran = set(results["method"])
    expected = {m.name for m in methods if m.applies_to(TASKS[task])}
    assert ran == expected
    assert set(results["metric"]) == set(TASKS[task].metrics)
    assert (results["n_train"] == TINY_ROWS.n_train).all() and (results["n_test"] == TINY_ROWS.n_test).all()
    assert results.loc[results["metric"].isin(["mse", "mae", "rmse"]), "value"].notna().all()
    stem = results_stem(TASKS[task], TINY_BUDGET, TINY_ROWS)
    table = (tmp_path / "results" / f"{stem}.md").read_text()
    assert all(f"| {method} |" in table for method in ran)
    assert (tmp_path / "img" / f"{stem}-scatter.png").stat().st_size > 0
    written = pd.read_csv(tmp_path / "results" / f"{stem}.csv")
    assert {"task", "method", "metric", "value", "fit_seconds", "n_train", "n_test", "budget", "date",
            "machine"} <= set(written.columns)


def test_results_stem_names_row_counts_and_protein_crops_other_than_the_budgets():
    davis, quick = TASKS["ba-davis"], BUDGETS["quick"]
    assert results_stem(davis, quick, davis.quick) == "ba-davis-quick"
    assert results_stem(davis, quick, Rows(1000, 300, davis.quick.max_residues)) == "ba-davis-quick-1000x300"
    assert results_stem(davis, quick, Rows(1000, 300, None)) == "ba-davis-quick-1000x300-whole-proteins"
    assert results_stem(davis, quick, replace(davis.quick, max_residues=256)) == "ba-davis-quick-256res"
    assert results_stem(davis, BUDGETS["full"], Rows()) == "ba-davis-full"


def test_cpu_seconds_count_finished_child_processes():
    started = cpu_seconds()
    subprocess.run([sys.executable, "-c", "sum(range(10 ** 7))"], check=True)
    assert cpu_seconds() - started > 0.1  # the child's loop; this process only waits


def test_a_partial_run_replaces_only_its_methods(tmp_path):
    path = tmp_path / "results.csv"
    merge_into(path, pd.DataFrame({"method": ["a", "b"], "value": [1, 2]}), ["method"])
    merged = merge_into(path, pd.DataFrame({"method": ["b"], "value": [3]}), ["method"])
    assert dict(zip(merged["method"], merged["value"])) == {"a": 1, "b": 3}


def test_prefix_pieces_builds_both_cache_plans_with_equal_readouts(shared_data, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prefix_pieces", "--pairs", "12", "--proteins", "3", "--plain",
                                      "--backbone", "tiny-llama"])
    prefix_pieces.main()
    output = capsys.readouterr().out
    assert "one piece per prompt: 12 prompts, 12 pieces" in output
    assert float(re.search(r"max \|readout difference\| (\S+);", output).group(1)) < 1e-5


def test_kv_store_speed_times_both_layouts_of_equal_stores(capsys):
    medians = kv_store_speed.main(["--gib", "0.001", "--piece-tokens", "4", "--layout", "2,1,4", "--batch-size", "3",
                                   "--batches", "2", "--threads", "1"])
    assert set(medians) == {"layer-major", "token-major"} and all(seconds > 0 for seconds in medians.values())
    assert "the gathered tensors are equal" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_lists_tasks_and_methods(capsys):
    assert cli.main(["list"]) == 0
    output = capsys.readouterr().out
    assert all(task in output for task in TASKS) and all(method in output for method in METHODS)


def test_a_run_leaves_chemtag_s_variants_out_unless_they_are_named():
    default = [m.name for m in resolve_methods(TASKS["dc-oneil"], None)]
    assert default == ["mean", "gbm", "random-forest", "ridge", "deepsynergy", "chemtag", "probe-mean",
                       "probe-last", "prompt-tuning", "lora"]
    named = resolve_methods(TASKS["dc-oneil"], ["chemtag", "chemtag-kernel", "deepdta"])
    assert [m.name for m in named] == ["chemtag", "chemtag-kernel"]  # deepdta is for ba-davis only


@pytest.mark.parametrize("option, expected", [([], None), (["--methods", "all"], list(METHODS)),
                                              (["--methods", "mean,chemtag-huber"], ["mean", "chemtag-huber"])])
def test_cli_passes_every_method_with_methods_all(option, expected, monkeypatch):
    passed = {}
    monkeypatch.setattr(cli, "run_many", lambda *args, methods, **options: passed.update(methods=methods))
    assert cli.main(["run", "--task", "dc-oneil", *option]) == 0
    assert passed["methods"] == expected


def test_chemtag_params_reach_every_chemtag_method_over_its_own(monkeypatch):
    passed = {}
    monkeypatch.setattr(cli, "run_many", lambda *args, **options: passed.update(options))
    assert cli.main(["run", "--task", "qed", "--chemtag-params", '{"pool_layers": [1, 1.0], "head": "linear"}']) == 0
    context = Context(TASKS["qed"], TINY_BUDGET, Rows(), 0, "tiny-llama", Path("."), "cpu", passed["chemtag_params"])
    for name in ("chemtag", "chemtag-kernel"):
        params = METHODS[name].build(context).get_params()
        assert (params["pool_layers"], params["head"]) == ([1, 1.0], "linear")


def test_cli_refuses_an_unknown_method():
    with pytest.raises(SystemExit, match="Unknown methods"):
        cli.main(["run", "--task", "qed", "--methods", "mean,nonsense"])


def test_cli_runs_a_task_into_the_given_folders(shared_data, tmp_path):
    code = cli.main(["run", "--task", "qed", "--budget", "quick", "--methods", "mean,gbm", "--n-train", "30",
                     "--n-test", "10", "--data-dir", str(shared_data), "--results-dir", str(tmp_path),
                     "--img-dir", str(tmp_path)])
    assert code == 0
    written = pd.read_csv(tmp_path / "qed-quick-30x10.csv")
    assert set(written["method"]) == {"mean", "gbm"}
    assert (written["n_train"] == 30).all() and (written["n_test"] == 10).all()


def test_cli_keeps_proteins_whole_with_max_residues_0(shared_data, tmp_path):
    cli.main(["run", "--task", "descriptor", "--methods", "mean", "--n-train", "20", "--n-test", "8",
              "--max-residues", "0", "--data-dir", str(shared_data), "--results-dir", str(tmp_path),
              "--img-dir", str(tmp_path)])
    written = pd.read_csv(tmp_path / "descriptor-quick-20x8-whole-proteins.csv")
    whole = load_data(TASKS["descriptor"], Rows(20, 8, max_residues=None), data_dir=shared_data)
    assert written["value"].item() == pytest.approx(np.mean((whole.y_test - whole.y_train.mean()) ** 2))


def test_cli_report_redraws_tables_and_plots_from_the_csv_files(shared_data, tmp_path):
    cli.main(["run", "--task", "qed", "--methods", "mean", "--n-train", "20", "--n-test", "8", "--data-dir",
              str(shared_data), "--results-dir", str(tmp_path), "--img-dir", str(tmp_path)])
    drawn = [tmp_path / "qed-quick-20x8.md", tmp_path / "qed-quick-20x8-scatter.png"]
    for path in drawn:
        path.unlink()
    assert cli.main(["report", "--results-dir", str(tmp_path), "--img-dir", str(tmp_path)]) == 0
    assert all(path.is_file() for path in drawn)
    assert "| mean |" in drawn[0].read_text()
