"""Feature tags: numeric features per cell line, projected into vectors right before the function tag."""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import KFold, cross_val_score
from torch import nn

from chemtag import DrugComboRegressor
from chemtag.backbones import load_backbone
from chemtag.feature_tags import FeatureTag
from chemtag.model import Batch, TaggedModel
from chemtag.prefix_cache import PrefixCache
from chemtag.tags import Tag
from chemtag.templates import Template, TemplateEncoder, with_feature_slot
from chemtag.training import TrainingConfig, predict, train

FAST = dict(backbone="tiny-llama", max_epochs=1, verbose=0, validation_fraction=0)
P = 3
CELL_LINES = ["A2058", "HT29", "MCF7"]
FEATURES = pd.DataFrame(np.random.default_rng(0).normal(size=(3, 5)), index=pd.Index(CELL_LINES, name="SAMPLE_NAME"),
                        columns=[f"gene{i}" for i in range(5)])
PAIRS = [("CCO", "c1ccccc1O"), ("CC(=O)Nc1ccc(O)cc1", "CCN"), ("CCCC", "OCCO"), ("c1ccncc1", "CC(C)O")]
COMBOS = pd.DataFrame([(a, b, cell) for a, b in PAIRS for cell in CELL_LINES],
                      columns=["Drug1", "Drug2", "Cell_Line_ID"])
TARGETS = np.arange(len(COMBOS), dtype=float) % 5
NO_CELL_LINE_TEXT = ("Input: The SMILES of drug 1 is <SMILES> {Drug1}. The SMILES of drug 2 is <SMILES> {Drug2}. "
                     "Output: The drug combination synergy is <DC>")


@pytest.fixture(scope="module")
def fitted() -> DrugComboRegressor:
    return DrugComboRegressor(cell_line_features=FEATURES, **FAST).fit(COMBOS, TARGETS)


# ----------------------------------------------------------------- templates
def test_a_feature_slot_names_a_field_and_stands_before_the_function_tag():
    source = with_feature_slot("Input: The cell line is {cell}. Output: The synergy is <DC>", "cell")
    assert source == "Input: The cell line is {cell}. Output: The synergy is <{cell}> <DC>"
    assert with_feature_slot(source, "cell") == source
    template = Template.parse(source)
    assert template.fields == ("cell",) and template.feature_fields == ("cell",)
    assert template.tag_names == ("DC",) and template.function_tag == "DC"
    assert Template.parse("Output: <{cell}> <DC>").fields == ("cell",), "a feature slot alone makes its field an input"


def test_feature_rows_follow_the_tag_table(tiny_llama):
    template = Template.parse("Cell {cell}. Output: <SMILES> <{cell}> <DC>")
    encoder = TemplateEncoder(template, tiny_llama.tokenizer, ["SMILES", "DC"], P, entities=["x", "y"])
    prompts = encoder.encode({"cell": ["y", "x"]})
    for slots, entity in zip(prompts.tag_slots, [1, 0]):
        assert slots[-2 * P:-P].tolist() == [2 * P + entity * P + k for k in range(P)]
        assert slots[-P:].tolist() == [P, P + 1, P + 2]
    with pytest.raises(ValueError, match="No feature vectors for 'z'"):
        encoder.encode({"cell": ["z"]})
    with pytest.raises(ValueError, match="need a model with feature vectors"):
        TemplateEncoder(template, tiny_llama.tokenizer, ["SMILES", "DC"], P)


# ----------------------------------------------------------------- the model and the prefix cache
TEMPLATE = "Input: <SMILES> {smiles}. The cell line is {cell}. Output: The synergy is <{cell}> <DC>"
VALUES = {"smiles": ["CCO", "c1ccccc1C(=O)O", "CCO", "N#C", "CCO"], "cell": ["b", "a", "a", "c", "c"]}


def feature_model(backbone, isolate: bool) -> TaggedModel:
    """Random tags and a feature tag whose projection is random, so that every cell line has its own vectors."""
    generator = torch.Generator().manual_seed(0)
    d = backbone.hidden_size
    tags = [Tag(name, kind, 0.1 * torch.randn(P, d, generator=generator)) for name, kind in [("SMILES", "domain"),
                                                                                          ("DC", "function")]]
    features = torch.randn(3, 4, generator=generator)
    feature_tag = FeatureTag.initialise(["a", "b", "c"], features, 0.1 * torch.randn(P, d, generator=generator))
    with torch.no_grad():
        feature_tag.projection.weight.normal_(generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = nn.Linear(d, 1)
    return TaggedModel(backbone, tags, head, ["DC"], isolate, feature_tag)


def encode(model: TaggedModel):
    encoder = TemplateEncoder(Template.parse(TEMPLATE), model.backbone.tokenizer, model.tag_names, P, model.feature_ids)
    return encoder.encode(VALUES)


def readout_and_gradients(model: TaggedModel, batch: Batch):
    states = model.readout_states(batch)
    direction = torch.randn(states.shape, generator=torch.Generator().manual_seed(1), dtype=states.dtype)
    gradients = torch.autograd.grad((states * direction).sum(),
                                    [model.tag_vectors["DC"], model.feature_tag.projection.weight])
    return states, gradients


@pytest.mark.parametrize("isolate", [False, True])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_the_prefix_cache_stops_before_the_feature_vectors_and_stays_exact(name, isolate):
    model = feature_model(load_backbone(name, dtype=torch.float64), isolate)
    prompts = encode(model)
    cache = PrefixCache(model, prompts).compute(batch_size=2)
    assert all(len(ids) - length == 2 * P for ids, length in zip(prompts.input_ids, cache._prefix_lengths))
    rows = [0, 3, 1, 4, 2]
    full = Batch.collate(prompts, rows, model.backbone.tokenizer.pad_token_id, "cpu")
    (states, gradients), (cached_states, cached_gradients) = (readout_and_gradients(model, full),
                                                              readout_and_gradients(model, cache.batch(rows)))
    torch.testing.assert_close(cached_states, states, rtol=0, atol=1e-10)
    for cached, expected in zip(cached_gradients, gradients):
        assert expected.abs().max() > 1e-6
        torch.testing.assert_close(cached, expected, rtol=0, atol=1e-10 * expected.abs().max().item())
    torch.testing.assert_close(predict(model, prompts, 2, prefix_cache=True),  # a float32 head
                               predict(model, prompts, 2, prefix_cache=False), rtol=0, atol=1e-6)


def test_one_smiles_on_different_cell_lines_reads_out_differently(tiny_llama):
    model = feature_model(tiny_llama, isolate=False)
    states = model.readout_states(Batch.collate(encode(model), [0, 2, 4], tiny_llama.tokenizer.pad_token_id, "cpu"))
    assert not torch.allclose(states[1], states[2])  # "CCO" on cell lines a and c


def test_training_with_and_without_the_cache_trains_the_projection_alike(tiny_llama):
    cached, full = feature_model(tiny_llama, False), feature_model(tiny_llama, False)
    before = cached.feature_tag.projection.weight.detach().clone()
    targets = torch.linspace(-1, 1, len(VALUES["cell"]))[:, None]
    for model, prefix_cache in ((cached, True), (full, False)):
        config = TrainingConfig(max_epochs=2, batch_size=2, lr=1e-2, validation_fraction=0, verbose=0,
                                prefix_cache=prefix_cache, initialise_head=False)
        train(model, encode(model), targets, nn.functional.mse_loss, config)
    assert not torch.equal(cached.feature_tag.projection.weight, before)
    torch.testing.assert_close(cached.feature_tag.projection.weight, full.feature_tag.projection.weight,
                               rtol=0, atol=1e-5)


# ----------------------------------------------------------------- DrugComboRegressor(cell_line_features=...)
def test_features_enter_before_the_function_tag_and_the_projection_trains(fitted):
    assert fitted.template_.endswith("synergy is <{Cell_Line_ID}> <DC>")
    assert fitted.feature_ids_ == CELL_LINES
    state = fitted.feature_tag_
    assert state["features"].shape == (3, 5) and state["projection.weight"].shape == (fitted.tag_length * 64, 5)
    assert state["projection.weight"].abs().max() > 0, "the projection starts at zero weight and trains"
    torch.testing.assert_close(state["feature_mean"], torch.tensor(FEATURES.mean().to_numpy(), dtype=torch.float32))


def test_features_alone_tell_cell_lines_apart():
    model = DrugComboRegressor(cell_line_features=FEATURES, template=NO_CELL_LINE_TEXT, **FAST).fit(COMBOS, TARGETS)
    assert model.template_ == with_feature_slot(NO_CELL_LINE_TEXT, "Cell_Line_ID")
    one_pair = COMBOS.iloc[:3]  # one drug pair on the three cell lines
    assert len(np.unique(model.predict(one_pair))) == 3
    without = DrugComboRegressor(template=NO_CELL_LINE_TEXT, **FAST).fit(COMBOS, TARGETS)
    predicted = without.predict(one_pair)  # the same prompt three times: equal up to float32 rounding in the head
    np.testing.assert_allclose(predicted, predicted[0], rtol=1e-6, atol=0)
    assert np.ptp(model.predict(one_pair)) > 1e3 * np.ptp(predicted)


def test_a_cell_line_without_features_is_refused_before_any_compute(fitted, monkeypatch):
    unknown = COMBOS.assign(Cell_Line_ID=["A2058", "K562"] * 6)
    monkeypatch.setattr(DrugComboRegressor, "_backbone", lambda self: pytest.fail("the backbone was loaded"))
    with pytest.raises(ValueError, match=r"column 'Cell_Line_ID' at 6 of 12 rows: 1 \('K562'\), 3 \('K562'\)"):
        DrugComboRegressor(cell_line_features=FEATURES, **FAST).fit(unknown, TARGETS)
    with pytest.raises(ValueError, match="no features for these IDs in cell_line_features"):
        fitted.predict(unknown)


def test_on_invalid_nan_drops_and_masks_cell_lines_without_features(fitted):
    unknown = COMBOS.assign(Cell_Line_ID=["A2058", "K562"] * 6)
    with pytest.warns(UserWarning, match="Dropping 6 of 12 rows"):
        DrugComboRegressor(cell_line_features=FEATURES, on_invalid="nan", **FAST).fit(unknown, TARGETS)
    predictions = pickle.loads(pickle.dumps(fitted)).set_params(on_invalid="nan").predict(unknown)
    assert np.isnan(predictions[1::2]).all() and np.isfinite(predictions[::2]).all()


@pytest.mark.parametrize("table, message", [
    (FEATURES.to_numpy(), "must be a pandas DataFrame"),
    (FEATURES.reset_index(), "non-numeric columns \\['SAMPLE_NAME'\\].*set_index\\('SAMPLE_NAME'\\)"),
    (pd.concat([FEATURES, FEATURES.iloc[:1]]), "duplicated IDs \\['A2058'\\]"),
    (FEATURES.assign(gene0=[0.0, np.nan, 1.0]), "missing or infinite features .* for IDs \\['HT29'\\]"),
    (FEATURES.iloc[:, :0], "at least one row and one feature column"),
])
def test_a_malformed_feature_table_is_refused(table, message):
    with pytest.raises((TypeError, ValueError), match=message):
        DrugComboRegressor(cell_line_features=table, **FAST).fit(COMBOS, TARGETS)


def test_save_load_and_joblib_predict_identically_without_the_table(fitted, tmp_path):
    expected = fitted.predict(COMBOS)
    folder = fitted.save(tmp_path / "model")
    assert (folder / "feature_tag.safetensors").is_file() and (folder / "frames.safetensors").is_file()
    loaded = DrugComboRegressor.load(folder)
    pd.testing.assert_frame_equal(loaded.cell_line_features, FEATURES)
    assert loaded.feature_ids_ == CELL_LINES
    loaded.cell_line_features = None  # prediction uses the fitted features, not the parameter
    np.testing.assert_array_equal(loaded.predict(COMBOS), expected)
    joblib.dump(fitted, tmp_path / "model.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "model.joblib").predict(COMBOS), expected)


def test_clone_keeps_the_table_and_a_refit_without_it_drops_the_feature_tag(fitted):
    copy = clone(fitted)
    pd.testing.assert_frame_equal(copy.get_params()["cell_line_features"], FEATURES)
    assert not hasattr(copy, "feature_tag_")
    copy.set_params(cell_line_features=None).fit(COMBOS, TARGETS)
    assert not hasattr(copy, "feature_tag_") and not hasattr(copy, "feature_ids_")
    assert copy.template_ == DrugComboRegressor().template


def test_cross_val_score_with_cell_line_features():
    model = DrugComboRegressor(cell_line_features=FEATURES, **FAST)
    scores = cross_val_score(model, COMBOS, TARGETS, cv=KFold(3), scoring="neg_mean_squared_error")
    assert scores.shape == (3,) and np.isfinite(scores).all()
