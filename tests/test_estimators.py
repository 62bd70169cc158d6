"""The estimators behave as scikit-learn users expect."""

import functools
import json
import os
import pickle
import re
import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from chemtag import QEDRegressor, TagLLMClassifier, TagLLMRegressor, losses
from chemtag.heads import LinearHead
from chemtag.tags import Tag, TagLibrary

FAST = dict(backbone="tiny-llama", max_epochs=2, verbose=0, validation_fraction=0)
SMILES = ["CCO", "c1ccccc1", "CCN", "CC(=O)O", "CCCC", "c1ccncc1", "CC(C)O", "OCCO", "CCOC", "C1CCCCC1", "CCCl", "CCBr"]
TARGETS = np.arange(len(SMILES), dtype=float) / 10


def test_fit_returns_self_and_sets_fitted_attributes():
    model = QEDRegressor(**FAST)
    assert model.fit(pd.DataFrame({"Drug": SMILES}), TARGETS) is model
    assert set(model.tags_) == {"SMILES", "QED"}
    assert model.tags_["QED"].vectors.shape == (10, 64)
    assert model.n_features_in_ == 1 and list(model.feature_names_in_) == ["Drug"]
    assert [record["epoch"] for record in model.history_] == [0, 1, 2], "epoch 0: the head fitted to the readouts"


def test_init_stores_parameters_unchanged():
    domains = {"Drug": "SMILES"}
    model = TagLLMRegressor(domains, "QED", lr=0.01)
    assert model.domains is domains and model.get_params()["lr"] == 0.01


def test_clone_of_a_fitted_estimator_is_unfitted_with_equal_params():
    model = QEDRegressor(lr=0.002, **FAST).fit(SMILES, TARGETS)
    copy = clone(model)
    assert copy.get_params() == model.get_params()
    assert not hasattr(copy, "tags_")


def test_presets_expose_their_defaults_as_parameters():
    params = QEDRegressor().get_params()
    assert params["domains"] == {"Drug": "SMILES"} and params["template"].endswith("<QED>")
    assert params["function_tag"] is None  # the template's last tag
    assert QEDRegressor().set_params(lr=0.5).lr == 0.5
    assert params["loss"] == "squared_error" and clone(QEDRegressor(loss="huber")).loss == "huber"
    with pytest.raises(TypeError, match="^QEDRegressor: got an unexpected keyword argument 'learning_rate'$"):
        QEDRegressor(learning_rate=0.1)


def test_huber_loss_is_what_the_probe_training_and_early_stopping_minimise(monkeypatch):
    calls = []

    @functools.wraps(losses.huber)
    def spy(outputs, targets):
        calls.append(outputs.requires_grad)
        return losses.huber(outputs, targets)

    monkeypatch.setitem(losses.REGRESSION_LOSSES, "huber", spy)
    QEDRegressor(loss="huber", **(FAST | dict(validation_fraction=0.25))).fit(SMILES, TARGETS)
    assert True in calls, "training steps"
    assert False in calls, "the probe's fits and the validation losses"


def test_huber_loss_is_squared_within_one_standard_deviation_and_linear_beyond():
    residuals = torch.tensor([0.5, -0.5, 3.0, -3.0])
    outputs = residuals[:, None]
    expected = torch.tensor([0.125, 0.125, 2.5, 2.5]).mean()  # 0.5 r^2 inside, |r| - 0.5 beyond
    torch.testing.assert_close(losses.huber(outputs, torch.zeros(4)), expected)


def test_an_unknown_loss_is_refused_before_fitting():
    with pytest.raises(ValueError, match=r"^loss must be one of \('squared_error', 'huber'\), got 'l1'\.$"):
        QEDRegressor(loss="l1", **FAST).fit(SMILES, TARGETS)


def test_a_refitted_head_is_fitted_again_after_every_epoch(monkeypatch):
    fits = []
    initialise = LinearHead.initialise

    def counting(head, *args, **kwargs):
        fits.append(len(args[0]))
        return initialise(head, *args, **kwargs)

    monkeypatch.setattr(LinearHead, "initialise", counting)
    model = QEDRegressor(head_training="refit", **FAST).fit(SMILES, TARGETS)
    assert [record["epoch"] for record in model.history_] == [0, 1, 2]
    assert fits == [len(SMILES)] * 3, "the probe, then once after each epoch, on the training rows"
    assert np.isfinite(model.predict(SMILES)).all()


def test_seeded_fits_predict_identically():
    first = QEDRegressor(random_state=3, **FAST).fit(SMILES, TARGETS).predict(SMILES)
    second = QEDRegressor(random_state=3, **FAST).fit(SMILES, TARGETS).predict(SMILES)
    np.testing.assert_array_equal(first, second)


def test_zero_epochs_fit_the_head_alone_to_the_tags_as_they_stand():
    untrained = QEDRegressor(random_state=0, **{**FAST, "max_epochs": 0})
    trained = QEDRegressor(random_state=0, **FAST).fit(SMILES, TARGETS)
    tag = untrained.fit(SMILES, TARGETS).tags_["QED"].vectors
    assert [record["epoch"] for record in untrained.history_] == [0]
    assert untrained.history_[0] == {**trained.history_[0], "seconds": untrained.history_[0]["seconds"]}
    assert not torch.equal(tag, trained.tags_["QED"].vectors)
    torch.testing.assert_close(untrained.fit(SMILES, TARGETS[::-1].copy()).tags_["QED"].vectors, tag)
    assert np.isfinite(untrained.predict(SMILES)).all()


def test_warm_start_continues_training():
    model = QEDRegressor(warm_start=True, **FAST).fit(SMILES, TARGETS)
    before = model.tags_["QED"].vectors.clone()
    model.fit(SMILES, TARGETS)
    assert [record["epoch"] for record in model.history_] == [0, 1, 2, 3, 4], "the head is fitted once"
    assert not np.array_equal(before.numpy(), model.tags_["QED"].vectors.numpy())


def test_classifier_predicts_seen_labels_and_probabilities():
    labels = np.array(["small", "big"] * 6)
    model = TagLLMClassifier({"Drug": "SMILES"}, "Size", **FAST).fit(pd.DataFrame({"Drug": SMILES}), labels)
    probabilities = model.predict_proba(pd.DataFrame({"Drug": SMILES[:3]}))
    assert list(model.classes_) == ["big", "small"]
    assert probabilities.shape == (3, 2) and np.allclose(probabilities.sum(axis=1), 1)
    assert set(model.predict(pd.DataFrame({"Drug": SMILES}))) <= {"big", "small"}


def test_a_refit_that_fails_leaves_the_earlier_fit_as_it_was():
    model = QEDRegressor(**FAST).fit(SMILES, TARGETS)
    expected, fitted = model.predict(SMILES), {k: v for k, v in vars(model).items() if k.endswith("_")}
    absent_gpu = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(RuntimeError, match="is not available"):  # after y was standardised anew
        model.set_params(device=absent_gpu).fit(SMILES[:6], TARGETS[:6] * 100)
    assert {k: v for k, v in vars(model).items() if k.endswith("_")} == fitted
    np.testing.assert_array_equal(model.set_params(device="cpu").predict(SMILES), expected)

    labels = np.array(["small", "big"] * 6)
    classifier = TagLLMClassifier({"Drug": "SMILES"}, "Size", **FAST).fit(pd.DataFrame({"Drug": SMILES}), labels)
    with pytest.raises(ValueError, match="longer than the limit"):
        classifier.set_params(max_length=3).fit(pd.DataFrame({"Drug": SMILES}), np.array(["a", "b", "c"] * 4))
    assert list(classifier.classes_) == ["big", "small"]
    assert classifier.set_params(max_length=None).predict_proba(pd.DataFrame({"Drug": SMILES})).shape == (12, 2)


def test_set_params_rebuilds_the_model_from_the_fitted_tags():
    pairs = pd.DataFrame({"A": SMILES, "B": SMILES[::-1]})
    model = TagLLMRegressor({"A": "SMILES", "B": "SMILES"}, "Y", isolate_segments=True, **FAST).fit(pairs, TARGETS)
    isolated = model.predict(pairs)
    attending = model.set_params(isolate_segments=False).predict(pairs)  # B's tokens now see A's
    assert not np.allclose(isolated, attending)
    np.testing.assert_array_equal(model.set_params(isolate_segments=True).predict(pairs), isolated)

def test_pipeline_and_cross_val_score_in_parallel():
    pipeline = Pipeline([
        ("strip", FunctionTransformer(lambda frame: frame.apply(lambda column: column.str.strip()))),
        ("model", QEDRegressor(**FAST)),
    ])
    X = pd.DataFrame({"Drug": [f" {s} " for s in SMILES]})
    scores = cross_val_score(pipeline, X, TARGETS, cv=KFold(3), n_jobs=2, scoring="neg_mean_squared_error")
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_grid_search_over_tag_length_and_learning_rate():
    search = GridSearchCV(QEDRegressor(**FAST), {"tag_length": [2, 4], "lr": [1e-3, 1e-2]}, cv=2,
                          scoring="neg_mean_squared_error")
    search.fit(pd.DataFrame({"Drug": SMILES}), TARGETS)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_estimator_.tags_["QED"].length == search.best_params_["tag_length"]


def test_pickle_holds_no_backbone_weights_and_predicts_identically():
    model = QEDRegressor(**FAST).fit(SMILES, TARGETS)
    expected = model.predict(SMILES)
    payload = pickle.dumps(model)
    assert len(payload) < 1_000_000
    np.testing.assert_array_equal(pickle.loads(payload).predict(SMILES), expected)


def test_a_model_saved_on_a_gpu_runs_on_the_cpu_where_there_is_none(tmp_path):
    model = QEDRegressor(**FAST).fit(SMILES, TARGETS)
    expected = model.predict(SMILES)
    absent_gpu = f"cuda:{torch.cuda.device_count()}"  # one past the last CUDA device: absent on any machine
    model.set_params(device=absent_gpu)
    with pytest.raises(RuntimeError, match=r"is not available: .*set_params\(device='cpu'\)"):
        model.predict(SMILES)
    message = f"This QEDRegressor was saved with device='{absent_gpu}', which this machine lacks; it runs on the CPU"
    with pytest.warns(UserWarning, match=re.escape(message)):
        unpickled = pickle.loads(pickle.dumps(model))
    with pytest.warns(UserWarning, match=re.escape(message)):
        loaded = QEDRegressor.load(model.save(tmp_path / "model"))
    for copy in (unpickled, loaded):
        assert copy.device == "cpu"
        np.testing.assert_array_equal(copy.predict(SMILES), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_fitted_on_the_gpu_predicts_on_the_cpu_in_a_process_without_one(tmp_path):
    model = QEDRegressor(**FAST, device="cuda").fit(SMILES, TARGETS)
    joblib.dump(model, tmp_path / "model.joblib")
    script = (
        "import joblib, json; "
        f"model = joblib.load({str(tmp_path / 'model.joblib')!r}); "
        f"print(json.dumps(model.predict({SMILES!r}).tolist()))"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}).stdout
    np.testing.assert_allclose(np.array(json.loads(output)), model.predict(SMILES), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_domain_tags_loaded_on_the_cpu_train_with_a_gpu_backbone(tiny_llama, tmp_path):
    library = TagLibrary(tiny_llama.fingerprint)
    library.add(Tag.initialise("SMILES", "domain", tiny_llama))
    model = QEDRegressor(**FAST, device="cuda", domain_tags=library.save(tmp_path / "tags")).fit(SMILES, TARGETS)
    assert torch.equal(model.tags_["SMILES"].vectors, library["SMILES"].vectors)  # frozen by default
    assert np.isfinite(model.predict(SMILES)).all()


def test_joblib_round_trip_in_a_fresh_process(tmp_path):
    model = QEDRegressor(**FAST).fit(SMILES, TARGETS)
    joblib.dump(model, tmp_path / "model.joblib")
    script = (
        "import joblib, json, sys; "
        f"model = joblib.load({str(tmp_path / 'model.joblib')!r}); "
        f"print(json.dumps(model.predict({SMILES!r}).tolist()))"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    np.testing.assert_array_equal(np.array(json.loads(output)), model.predict(SMILES))


def test_folder_round_trip_is_exact_and_pickle_free(tmp_path):
    model = TagLLMRegressor({"Drug": "SMILES"}, "QED", **FAST).fit(pd.DataFrame({"Drug": SMILES}), TARGETS)
    model.save(tmp_path / "model")
    files = sorted(str(p.relative_to(tmp_path / "model")) for p in (tmp_path / "model").rglob("*") if p.is_file())
    assert files == ["estimator.json", "head.safetensors", "tags/manifest.json", "tags/tags.safetensors"]
    loaded = TagLLMRegressor.load(tmp_path / "model")
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict(pd.DataFrame({"Drug": SMILES})), model.predict(pd.DataFrame({"Drug": SMILES})))


def test_loading_refuses_a_corrupted_head_and_a_newer_format(tmp_path):
    folder = QEDRegressor(**FAST).fit(SMILES, TARGETS).save(tmp_path / "model")
    config = json.loads((folder / "estimator.json").read_text())
    (folder / "estimator.json").write_text(json.dumps(config | {"format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        QEDRegressor.load(folder)
    (folder / "estimator.json").write_text(json.dumps(config))
    head = (folder / "head.safetensors").read_bytes()
    (folder / "head.safetensors").write_bytes(head[:-4] + b"\x00\x00\x00\x01")
    with pytest.raises(ValueError, match="does not match its checksum"):
        QEDRegressor.load(folder)


def test_load_checks_the_estimator_class(tmp_path):
    folder = QEDRegressor(**FAST).fit(SMILES, TARGETS).save(tmp_path / "model")
    assert isinstance(TagLLMRegressor.load(folder), QEDRegressor)
    with pytest.raises(TypeError, match="holds a QEDRegressor, not a TagLLMClassifier"):
        TagLLMClassifier.load(folder)


def test_arrays_of_strings_are_read_in_field_order():
    model = QEDRegressor(**FAST).fit(np.array(SMILES)[:, None], TARGETS)
    assert model.predict(np.array([["CCO"]])).shape == (1,)
    with pytest.raises(ValueError, match="X has 2 features, but QEDRegressor is expecting 1 features as input."):
        model.predict(np.array([["CCO", "CCN"]]))


def test_array_columns_follow_the_template_s_fields_whatever_the_order_of_domains():
    model = TagLLMRegressor({"Solvent": "Text", "Drug": "SMILES"}, template="<SMILES> {Drug} in {Solvent} <Y>", **FAST)
    rows = np.array([[smiles, "water"] for smiles in SMILES])
    expected = model.fit(rows, TARGETS).predict(rows)
    assert model.template_ == "<SMILES> {Drug} in {Solvent} <Y>"
    table = pd.DataFrame({"Solvent": ["water"] * len(SMILES), "Drug": SMILES})
    np.testing.assert_array_equal(model.predict(table), expected)


def test_a_misspelt_field_in_domains_is_refused_rather_than_read_as_text():
    model = TagLLMRegressor({"drug": "SMILES"}, template="Input: <SMILES> {Drug}. Output: <QED>", **FAST)
    with pytest.raises(ValueError) as error:
        model.fit(pd.DataFrame({"Drug": SMILES}), TARGETS)
    assert str(error.value) == ("domains names fields ['drug'] that the template does not have, and the template's "
                                "fields ['Drug'] have no domain (they would be read as text).")


def test_a_template_without_fields_is_refused():
    with pytest.raises(ValueError, match=r"^The template 'Output: <Y>' has no fields, so no input would reach"):
        TagLLMRegressor(template="Output: <Y>", **FAST).fit(pd.DataFrame({"Drug": SMILES}), TARGETS)


def test_the_function_tag_is_the_template_s_last_tag():
    assert TagLLMRegressor({"Drug": "SMILES"}, **FAST).fit(SMILES, TARGETS).template_.endswith("Output: <Output>")
    model = TagLLMRegressor({"Drug": "SMILES"}, template="Input: <SMILES> {Drug}. Output: <QED>", **FAST)
    assert list(model.fit(SMILES, TARGETS).tags_) == ["SMILES", "QED"]
    with pytest.raises(ValueError) as error:
        QEDRegressor(function_tag="LogP", **FAST).fit(SMILES, TARGETS)
    assert str(error.value) == ("function_tag is 'LogP' but the template's function tag (its last tag) is <QED>; "
                                "make them agree or leave function_tag=None.")


def test_prompts_longer_than_max_length_are_refused_with_their_rows():
    model = QEDRegressor(max_length=50, **FAST)
    with pytest.raises(ValueError, match=r"1 prompts are longer than the limit of 50 tokens: rows 1 \("):
        model.fit(["CCO", "C" * 60], [0.1, 0.2])


def test_a_dataframe_without_column_names_reads_like_the_array_it_wraps():
    array = np.array(SMILES, dtype=object)[:, None]
    from_frame = TagLLMRegressor(**FAST).fit(pd.DataFrame(array), TARGETS)
    from_array = TagLLMRegressor(**FAST).fit(array, TARGETS)
    assert from_frame.template_ == from_array.template_
    np.testing.assert_array_equal(from_frame.predict(pd.DataFrame(array)), from_array.predict(array))


def test_cache_memory_bytes_moves_the_prefix_cache_to_disk_without_changing_the_fit(capsys):
    in_memory = QEDRegressor(**(FAST | {"verbose": 1})).fit(SMILES, TARGETS)
    assert "in memory" in capsys.readouterr().out
    on_disk = QEDRegressor(cache_memory_bytes=0, **(FAST | {"verbose": 1})).fit(SMILES, TARGETS)
    assert "on disk" in capsys.readouterr().out
    np.testing.assert_array_equal(on_disk.predict(SMILES), in_memory.predict(SMILES))
    with pytest.raises(ValueError, match="cache_memory_bytes must be a non-negative integer"):
        QEDRegressor(cache_memory_bytes=-1, **FAST).fit(SMILES, TARGETS)


def test_bf16_fits_through_the_prefix_cache_with_pooled_fields():
    model = QEDRegressor(bf16=True, **FAST).fit(SMILES, TARGETS)
    assert model.head_["linear.weight"].shape == (1, 3 * 64)  # the readout, the SMILES in two layers
    assert model.predict(SMILES).dtype == np.float64 and np.isfinite(model.predict(SMILES)).all()


@pytest.mark.parametrize("disk_free, cached", [(None, True), (0, False)])
def test_bf16_predictions_take_the_path_the_fit_took(monkeypatch, disk_free, cached):
    """bfloat16 rounds the cached and full passes differently: a fit whose cache fitted neither memory nor
    disk predicts without the cache too, for the linear head's readouts and for the kernel head's."""
    from types import SimpleNamespace

    from chemtag.prefix_cache import PrefixCache

    params = FAST | dict(bf16=True, cache_memory_bytes=0)
    if disk_free is not None:
        monkeypatch.setattr("chemtag.prefix_cache.shutil.disk_usage", lambda path: SimpleNamespace(free=disk_free))
    computed = []
    compute = PrefixCache.compute
    monkeypatch.setattr(PrefixCache, "compute", lambda self, *a, **k: computed.append(self) or compute(self, *a, **k))
    for head in ("linear", "kernel"):
        model = QEDRegressor(head=head, **params).fit(SMILES, TARGETS)
        assert {record["prefix_cache"] for record in model.history_} == {cached}
        computed.clear()
        model.predict(SMILES)
        assert bool(computed) == cached


@pytest.mark.parametrize("pool_fields, pool_layers, blocks", [
    (True, (0.125, 0.5, 1.0), 5),  # on two layers: the first (0.125 and 0.5 round to it) and the final
    (True, (-1,), 3), (True, (1, 2, -1), 5), (False, (1, 2), 1),
    (True, "early", 5)])  # the first quarter of two layers, rounded up, is the first; and the final
def test_pool_fields_widens_the_head_by_one_block_per_domain_field_and_pooled_layer(pool_fields, pool_layers, blocks):
    X = pd.DataFrame({"a": SMILES, "b": SMILES[::-1], "note": ["x"] * len(SMILES)})
    model = TagLLMRegressor({"a": "SMILES", "b": "SMILES", "note": "Text"}, "Y", pool_fields=pool_fields,
                            pool_layers=pool_layers, **FAST)
    model.fit(X, TARGETS)
    assert model.head_["linear.weight"].shape == (1, blocks * 64)  # the text field is not pooled
    assert np.isfinite(model.predict(X)).all()


@pytest.mark.parametrize("pool_layers, message", [
    ((), "non-empty sequence"), (2, "non-empty sequence"), ((1, "2"), "non-empty sequence"), ((True,), "non-empty"),
    ("late", "^pool_layers must be 'early' or a non-empty sequence"),
    ((3,), "layer 3 does not exist; the backbone has 2 layers"), ((0,), "layer 0 does not exist"),
    ((-3,), "layer -3 does not exist"), ((1.5,), r"fraction of the depth must be in \(0, 1\], got 1.5")])
def test_pool_layers_that_name_no_layer_are_refused(pool_layers, message):
    with pytest.raises(ValueError, match=message):
        QEDRegressor(pool_layers=pool_layers, **FAST).fit(SMILES, TARGETS)


def test_a_model_saved_before_pool_fields_existed_loads_as_it_was_saved(tmp_path):
    model = QEDRegressor(pool_fields=False, **FAST).fit(SMILES, TARGETS)
    folder = model.save(tmp_path / "model")
    config = json.loads((folder / "estimator.json").read_text())
    del config["params"]["pool_fields"]
    (folder / "estimator.json").write_text(json.dumps(config))
    del model.pool_fields
    for loaded in QEDRegressor.load(folder), pickle.loads(pickle.dumps(model)):
        assert loaded.pool_fields is False
        np.testing.assert_array_equal(loaded.predict(SMILES), QEDRegressor.load(folder).predict(SMILES))


def test_a_model_saved_before_pool_layers_existed_pools_the_final_layer_as_it_was_saved(tmp_path):
    model = QEDRegressor(pool_layers=(-1,), **FAST).fit(SMILES, TARGETS)
    folder = model.save(tmp_path / "model")
    config = json.loads((folder / "estimator.json").read_text())
    del config["params"]["pool_layers"], config["tuple_params"]
    (folder / "estimator.json").write_text(json.dumps(config))
    expected = model.predict(SMILES)
    del model.pool_layers
    for loaded in QEDRegressor.load(folder), pickle.loads(pickle.dumps(model)):
        assert loaded.pool_layers == (-1,)
        np.testing.assert_array_equal(loaded.predict(SMILES), expected)


def test_a_model_that_pools_the_early_layers_loads_with_them(tmp_path):
    model = QEDRegressor(pool_layers="early", **FAST).fit(SMILES, TARGETS)
    loaded = QEDRegressor.load(model.save(tmp_path / "model"))
    assert loaded.pool_layers == "early"
    np.testing.assert_array_equal(loaded.predict(SMILES), model.predict(SMILES))


@pytest.mark.parametrize("change, width", [({"pool_fields": False}, 64), ({"pool_layers": (-1,)}, 128)])
def test_pooling_changed_after_a_fit_is_refused_until_fitted_again(change, width):
    model = QEDRegressor(**FAST).fit(SMILES, TARGETS).set_params(**change)
    with pytest.raises(ValueError, match=rf"^This model's head was fitted with other pool_fields or pool_layers \(it "
                                         rf"reads 192 features, .* give {width}\); set them back or fit again"):
        model.predict(SMILES)
    assert model.fit(SMILES, TARGETS).head_["linear.weight"].shape == (1, width)
