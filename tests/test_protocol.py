"""Stage 1 (domain tags by next-token prediction) and stage 3 (estimators compose pretrained domain tags)."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional

from chemtag import ProteinDescriptorRegressor, QEDRegressor, pretrained
from chemtag.cli import main
from chemtag.model import Batch, TaggedModel
from chemtag.protocol import _text_loss, encode_domain_texts, pretrain_domain_tag, spaced_residues, text_loss
from chemtag.descriptors import qed
from chemtag.stage2 import labelled_rows, pretrain_function_estimator
from chemtag.tags import Tag, TagLibrary

CORPUS = ["CCCCCCO", "CCCCO", "CCCCCCCCO", "CCCO", "CCCCCO", "CCCCCCCO"] * 4
FAST = dict(backbone="tiny-llama", max_epochs=1, verbose=0, validation_fraction=0)


def test_prompts_are_the_tag_followed_by_the_text(tiny_llama):
    prompts = encode_domain_texts(tiny_llama, ["CCO"], tag_length=3, max_tokens=50)
    body = tiny_llama.tokenizer(" CCO", add_special_tokens=False).input_ids
    assert prompts.tag_slots[0].tolist() == [0, 1, 2] + [-1] * len(body)
    assert prompts.input_ids[0][3:].tolist() == body


def test_only_text_tokens_are_scored(tiny_llama):
    tag = Tag.initialise("SMILES", "domain", tiny_llama, 3)
    model = TaggedModel(tiny_llama, [tag], torch.nn.Identity(), [])
    prompts = encode_domain_texts(tiny_llama, ["CCO", "CCCCCN"], tag_length=3, max_tokens=50)
    batch = Batch.collate(prompts, [0, 1], tiny_llama.tokenizer.pad_token_id, "cpu")
    loss, count = _text_loss(model, tiny_llama, batch)
    logits = tiny_llama.model(inputs_embeds=model.input_embeddings(batch), attention_mask=batch.attention_mask.long()).logits
    expected = []
    for row in range(2):
        ids = prompts.input_ids[row]
        for position in range(3, len(ids)):  # every text token, predicted from the position before it
            expected.append(functional.cross_entropy(logits[row, position - 1], torch.tensor(ids[position])))
    assert count == len(expected)
    torch.testing.assert_close(loss, torch.stack(expected).mean())


def test_pretraining_lowers_the_held_out_loss_below_no_tag_and_initial_tag(tiny_llama):
    tag, history = pretrain_domain_tag(tiny_llama, CORPUS, "SMILES", tag_length=4, steps=60, batch_size=8,
                                       lr=3e-2, verbose=0)
    held_out = ["CCCCCCCCCO", "CCCCCCO"]
    trained = text_loss(tiny_llama, held_out, tag)
    assert trained < text_loss(tiny_llama, held_out, None)
    assert trained < text_loss(tiny_llama, held_out, Tag.initialise("SMILES", "domain", tiny_llama, 4))
    assert tag.kind == "domain" and tag.provenance["steps"] == 60 and len(history) == 60


def test_spaced_residues():
    assert spaced_residues("MKT") == "M K T"


@pytest.fixture
def shipped_folder(tmp_path, monkeypatch, tiny_llama):
    """A shipped library for the tiny backbone in a temporary package-data folder."""
    monkeypatch.setattr(pretrained, "SHIPPED", tmp_path)
    monkeypatch.setattr(pretrained, "_WARNED", set())
    library = TagLibrary(tiny_llama.fingerprint)
    library.add(Tag("SMILES", "domain", torch.randn(10, 64), {"stage": 1}))
    return library.save(tmp_path / "tiny-llama")


def test_estimators_load_the_shipped_domain_tags_and_keep_them_frozen(shipped_folder):
    shipped = TagLibrary.load(shipped_folder)["SMILES"].vectors
    model = QEDRegressor(**FAST).fit(["CCO", "CCN", "CCC"], [0.1, 0.2, 0.3])
    assert torch.equal(model.tags_["SMILES"].vectors, shipped)
    tuned = QEDRegressor(tune_domain_tags=True, **(FAST | {"max_epochs": 3})).fit(["CCO", "CCN", "CCC"], [0.1, 0.2, 0.3])
    assert not torch.equal(tuned.tags_["SMILES"].vectors, shipped)


def test_a_missing_shipped_tag_warns_once_and_starts_from_the_initialisation(tmp_path, monkeypatch, tiny_llama):
    monkeypatch.setattr(pretrained, "SHIPPED", tmp_path)
    monkeypatch.setattr(pretrained, "_WARNED", set())
    with pytest.warns(UserWarning, match="No pretrained <SMILES> tag for backbone 'tiny-llama' \\(none is shipped\\)"):
        model = QEDRegressor(**FAST).fit(["CCO", "CCN"], [0.1, 0.2])
    assert torch.equal(model.tags_["SMILES"].vectors, Tag.initialise("SMILES", "domain", tiny_llama).vectors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        QEDRegressor(**FAST).fit(["CCO", "CCN"], [0.1, 0.2])


def test_a_tag_library_for_another_backbone_is_refused(shipped_folder):
    with pytest.raises(ValueError, match="trained for backbone 'tiny-llama', not for 'tiny-gpt2'"):
        QEDRegressor(**(FAST | {"backbone": "tiny-gpt2"}), domain_tags=str(shipped_folder)).fit(["CCO"], [0.1])


def test_a_shipped_library_of_another_backbone_is_not_used(shipped_folder, tiny_gpt2):
    assert pretrained.shipped_library(tiny_gpt2) is None


def test_cli_pretrain_writes_a_library_with_measured_losses(tmp_path, tiny_llama, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS + ["not a smiles"]))
    code = main(["pretrain", str(corpus), "--domain", "SMILES", "-o", str(tmp_path / "tags"), "--backbone",
                 "tiny-llama", "--steps", "5", "--batch-size", "4", "--validation", "4", "--tag-length", "4"])
    assert code == 0
    tag = TagLibrary.load(tmp_path / "tags", tiny_llama)["SMILES"]
    losses = tag.provenance["held_out_loss_nats_per_token"]
    assert set(losses) == {"no_tag", "initial_tag", "trained_tag"}
    assert tag.provenance["corpus"] == "corpus.txt" and tag.provenance["validation_texts"] == 4
    assert f"trained_tag {losses['trained_tag']:.4f}" in capsys.readouterr().out


@pytest.mark.slow
def test_a_fresh_install_finds_the_shipped_tags_for_the_default_backbone():
    from chemtag.backbones import load_backbone

    backbone = load_backbone()
    library = pretrained.shipped_library(backbone)
    assert library is not None and {"SMILES", "Protein", "SELFIES"} <= set(library.tags)
    for tag in library.tags.values():
        assert tag.vectors.shape == (10, backbone.hidden_size) and tag.provenance["stage"] == 1
        losses = tag.provenance["held_out_loss_nats_per_token"]
        assert losses["trained_tag"] < losses["no_tag"]  # the shipped measurement says the tag helps
    tags = pretrained.domain_tags(backbone, ["SMILES"], "pretrained", 10)
    assert torch.equal(tags[0].vectors, library["SMILES"].vectors)


@pytest.mark.parametrize("estimator", [QEDRegressor, ProteinDescriptorRegressor])
def test_a_fresh_install_finds_the_shipped_stage_2_estimators(estimator):
    model = estimator.pretrained(verbose=0)
    provenance = json.loads((pretrained.shipped_estimator_folder(model._backbone(), estimator.__name__)
                             / "stage2.json").read_text())
    assert provenance["stage"] == 2 and provenance["test_mse"] < provenance["mean_predictor_test_mse"]
    shipped_domain_tags = pretrained.shipped_library(model._backbone()).tags
    domain = next(name for name, tag in model.tags_.items() if tag.kind == "domain")
    assert torch.equal(model.tags_[domain].vectors, shipped_domain_tags[domain].vectors), "stage 2 froze it"


SMILES_CORPUS = ["C" * n + group for n in range(1, 9) for group in ("O", "N", "Cl", "C(=O)O", "c1ccccc1")]


def test_stage_2_labels_held_apart_corpus_entries_in_the_seeded_order(tmp_path):
    corpus = tmp_path / "smiles.txt"
    corpus.write_text("\n".join(["CCO", "c1ccccc1", "CCN", "not a smiles", "CC(=O)O", "CCCCCCCCCCCC"]))
    everything = labelled_rows(corpus, "QED", n_rows=5)
    later = labelled_rows(corpus, "QED", n_rows=3, skip=2)
    assert later["Drug"].tolist() == everything["Drug"].tolist()[2:5]
    np.testing.assert_allclose(later["Y"], qed(later["Drug"]))
    assert "CCCCCCCCCCCC" not in labelled_rows(corpus, "QED", n_rows=4, max_length=8)["Drug"].tolist()
    with pytest.raises(ValueError, match="has only 5 usable entries after skipping 0; asked for 6"):
        labelled_rows(corpus, "QED", n_rows=6)


def test_a_stage_2_estimator_is_saved_into_the_library_and_found_by_pretrained(shipped_folder, tmp_path):
    corpus = tmp_path / "smiles.txt"
    corpus.write_text("\n".join(SMILES_CORPUS))
    provenance = pretrain_function_estimator(corpus, "QED", shipped_folder, n_train=24, n_test=8, **FAST)
    assert provenance["n_train"] == 24 and provenance["mean_predictor_test_mse"] > 0
    recorded = json.loads((shipped_folder / "estimators" / "QEDRegressor" / "stage2.json").read_text())
    assert recorded == provenance
    shipped = QEDRegressor.pretrained("tiny-llama", verbose=0)
    assert torch.equal(shipped.tags_["SMILES"].vectors, TagLibrary.load(shipped_folder)["SMILES"].vectors)
    test = labelled_rows(corpus, "QED", n_rows=32)["Drug"][24:]
    assert np.mean((shipped.predict(test.to_frame()) - qed(test)) ** 2) == pytest.approx(provenance["test_mse"])


def test_pretrained_says_when_nothing_is_shipped(shipped_folder):
    with pytest.raises(LookupError, match="No pretrained ProteinDescriptorRegressor is shipped for backbone 'tiny-llama'"):
        ProteinDescriptorRegressor.pretrained("tiny-llama")


def test_cli_pretrain_function_writes_the_estimator_and_reports_its_error(shipped_folder, tmp_path, capsys):
    corpus = tmp_path / "smiles.txt"
    corpus.write_text("\n".join(SMILES_CORPUS))
    code = main(["pretrain-function", str(corpus), "--task", "QED", "-o", str(shipped_folder), "--backbone",
                 "tiny-llama", "--n-train", "20", "--n-test", "5", "--max-epochs", "1", "--head-training", "refit"])
    assert code == 0
    assert "QEDRegressor written to" in capsys.readouterr().out
    folder = shipped_folder / "estimators" / "QEDRegressor"
    assert QEDRegressor.load(folder).get_params()["head_training"] == "refit"
    recorded = json.loads((folder / "stage2.json").read_text())
    assert recorded["training"]["head_training"] == "refit" and recorded["training"]["max_epochs"] == 1
    assert recorded["training"]["pool_fields"] is True
    assert len(recorded["valid_loss_by_epoch"]) == 2  # the probe's epoch 0 and epoch 1


# ----------------------------------------------------------------- zero-shot composition


@pytest.fixture
def smiles_and_selfies_library(shipped_folder, tiny_llama):
    """The tiny backbone's shipped library with a <SELFIES> tag beside <SMILES>."""
    library = TagLibrary.load(shipped_folder)
    library.add(Tag("SELFIES", "domain", torch.randn(10, 64), {"stage": 1}))
    return library.save(shipped_folder)


def test_with_domain_swaps_the_domain_tag_and_keeps_function_tag_and_head(smiles_and_selfies_library):
    model = QEDRegressor(**FAST).fit(SMILES_CORPUS[:12], qed(SMILES_CORPUS[:12]))
    composed = model.with_domain("Drug", "SELFIES")
    assert composed.template_ == model.template_.replace("<SMILES> {Drug}", "<SELFIES> {Drug}")
    assert composed.fields_ == {"Drug": "SELFIES"} and model.fields_ == {"Drug": "SMILES"}, "the original is unchanged"
    assert set(composed.tags_) == {"SELFIES", "QED"}
    assert torch.equal(composed.tags_["SELFIES"].vectors, TagLibrary.load(smiles_and_selfies_library)["SELFIES"].vectors)
    assert torch.equal(composed.tags_["QED"].vectors, model.tags_["QED"].vectors)
    assert all(torch.equal(composed.head_[k], model.head_[k]) for k in model.head_)


def test_a_model_composed_back_to_its_own_domain_predicts_as_before(smiles_and_selfies_library):
    model = QEDRegressor(**FAST).fit(SMILES_CORPUS[:12], qed(SMILES_CORPUS[:12]))
    round_trip = model.with_domain("Drug", "SELFIES").with_domain("Drug", "SMILES")
    np.testing.assert_array_equal(round_trip.predict(SMILES_CORPUS[12:20]), model.predict(SMILES_CORPUS[12:20]))


def test_a_composed_model_reads_and_validates_the_new_domain(smiles_and_selfies_library, tmp_path):
    from chemtag.representations import convert

    composed = QEDRegressor(**FAST).fit(SMILES_CORPUS[:12], qed(SMILES_CORPUS[:12])).with_domain("Drug", "SELFIES")
    selfies = [convert(smiles, "SMILES", "SELFIES") for smiles in SMILES_CORPUS[12:16]]
    predictions = composed.predict(selfies)
    assert predictions.shape == (4,) and np.isfinite(predictions).all()
    with pytest.raises(ValueError, match=r"Invalid SELFIES in column .Drug. at 1 of 2 rows: 1 \(.not selfies.\)"):
        composed.predict([selfies[0], "not selfies"])
    loaded = QEDRegressor.load(composed.save(tmp_path / "composed"))
    np.testing.assert_array_equal(loaded.predict(selfies), predictions)
    assert loaded.get_params()["domains"] == {"Drug": "SELFIES"}


def test_a_clone_of_a_composed_model_trains_on_the_new_domain(smiles_and_selfies_library):
    from sklearn.base import clone

    composed = QEDRegressor(**FAST).fit(SMILES_CORPUS[:12], qed(SMILES_CORPUS[:12])).with_domain("Drug", "SELFIES")
    refitted = clone(composed).fit(["[C][C][O]", "[C][C][N]", "[C][C][C]"], [0.1, 0.2, 0.3])
    assert "<SELFIES> {Drug}" in refitted.template_ and set(refitted.tags_) == {"SELFIES", "QED"}


def test_with_domain_refuses_fields_it_cannot_compose(smiles_and_selfies_library):
    model = QEDRegressor(**FAST).fit(SMILES_CORPUS[:12], qed(SMILES_CORPUS[:12]))
    with pytest.raises(ValueError, match="'Target' is not an input field of this model; its fields are \\['Drug'\\]"):
        model.with_domain("Target", "SELFIES")
    with pytest.raises(ValueError, match="Unknown domain 'DNA'"):
        model.with_domain("Drug", "DNA")
    with pytest.raises(ValueError, match="'Drug' is SMILES input and 'Text' has no tag"):
        model.with_domain("Drug", "Text")


def test_cli_pretrain_converts_a_smiles_corpus_for_another_language(tmp_path, tiny_llama):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    code = main(["pretrain", str(corpus), "--domain", "SELFIES", "--corpus-language", "SMILES", "-o",
                 str(tmp_path / "tags"), "--backbone", "tiny-llama", "--steps", "2", "--batch-size", "4",
                 "--validation", "4", "--tag-length", "4"])
    assert code == 0
    tag = TagLibrary.load(tmp_path / "tags", tiny_llama)["SELFIES"]
    assert tag.provenance["corpus_language"] == "SMILES" and tag.provenance["texts"] == len(CORPUS) - 4
