"""The tagged model: what trains, where tags land, padding and segment isolation."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from chemtag.model import Batch, TaggedModel, pooled_layer_numbers
from chemtag.tags import Tag
from chemtag.templates import Template, TemplateEncoder

P = 3
COMBO = "Drug one <SMILES> {drug1} drug two <SMILES> {drug2}. Output: The synergy is <Synergy>"
VALUES = {
    "drug1": ["CCO", "CC(=O)Oc1ccccc1C(=O)O", "c1ccc2[nH]ccc2c1"],
    "drug2": ["O=C(O)c1ccccc1", "N#C", "CCN(CC)CC"],
}


def _tags(d: int) -> list[Tag]:
    """Random tags, every row distinct, so that a misplaced row shows."""
    generator = torch.Generator().manual_seed(0)
    return [
        Tag("SMILES", "domain", torch.randn(P, d, generator=generator) * 0.1),
        Tag("Synergy", "function", torch.randn(P, d, generator=generator) * 0.1),
    ]


def _model(backbone, isolate_segments: bool = False) -> TaggedModel:
    torch.manual_seed(0)
    return TaggedModel(backbone, _tags(backbone.hidden_size), nn.Linear(backbone.hidden_size, 1),
                       trainable=["Synergy"], isolate_segments=isolate_segments)


def _batch(model: TaggedModel, values=VALUES, rows=None) -> Batch:
    encoder = TemplateEncoder(Template.parse(COMBO), model.backbone.tokenizer, model.tag_names, P)
    prompts = encoder.encode(values)
    rows = range(len(prompts)) if rows is None else rows
    return Batch.collate(prompts, list(rows), model.backbone.tokenizer.pad_token_id, model.backbone.device)


def test_gradient_reaches_only_trainable_tags_and_head(tiny_backbone):
    model = _model(tiny_backbone)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        "tag_vectors.Synergy", "head.weight", "head.bias"}
    assert all(key.startswith(("tag_vectors.", "head.")) for key in model.state_dict())

    model(_batch(model)).square().sum().backward()
    assert all(p.grad is None for p in tiny_backbone.model.parameters())
    assert model.tag_vectors["SMILES"].grad is None
    assert (model.tag_vectors["Synergy"].grad.abs().sum(dim=1) > 0).all(), "every function-tag row gets gradient"
    assert model.head.weight.grad.abs().sum() > 0


def test_tag_rows_replace_vocabulary_embeddings_exactly_at_tag_slots(tiny_backbone):
    model = _model(tiny_backbone)
    batch = _batch(model)
    embeds = model.input_embeddings(batch)
    vocabulary = tiny_backbone.model.get_input_embeddings().weight
    tags = _tags(tiny_backbone.hidden_size)
    assert embeds.shape == (*batch.input_ids.shape, tiny_backbone.hidden_size)
    for row, position in torch.cartesian_prod(*map(torch.arange, batch.input_ids.shape)).tolist():
        slot = batch.tag_slots[row, position].item()
        expected = vocabulary[batch.input_ids[row, position]] if slot < 0 else tags[slot // P].vectors[slot % P]
        assert torch.equal(embeds[row, position], expected), (row, position, slot)
    assert (batch.tag_slots >= 0).sum() == 3 * len(VALUES["drug1"]) * P  # three tags per prompt


def test_readout_is_the_final_state_of_the_last_function_tag_vector(tiny_backbone):
    model = _model(tiny_backbone)
    batch = _batch(model, rows=[1])
    assert batch.tag_slots[0, -1] == model.tag_names.index("Synergy") * P + P - 1
    with torch.no_grad():
        plain = tiny_backbone.model.base_model(inputs_embeds=model.input_embeddings(batch)).last_hidden_state
        torch.testing.assert_close(model.readout_states(batch), plain[:, -1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("isolate_segments", [False, True])
def test_right_padding_does_not_change_a_readout(tiny_backbone, isolate_segments):
    model = _model(tiny_backbone, isolate_segments)
    batch = _batch(model)
    assert batch.attention_mask.sum(dim=1).unique().numel() == len(VALUES["drug1"]), "rows of different lengths"
    with torch.no_grad():
        together = model.readout_states(batch)
        alone = torch.cat([model.readout_states(_batch(model, rows=[row])) for row in range(len(together))])
    assert together.dtype == torch.float32 and together.shape == (len(VALUES["drug1"]), tiny_backbone.hidden_size)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def _segment_states(model: TaggedModel, batch: Batch, segment: int) -> torch.Tensor:
    """Final hidden states ``(B, n, d)`` of each row's ``n`` tokens in ``segment``, read through the model."""
    positions = [torch.nonzero(row == segment)[:, 0] for row in batch.segments]
    assert len({len(p) for p in positions}) == 1 and len(positions[0]), "one segment of one length per row"
    with torch.no_grad():
        return torch.stack([
            model.readout_states(dataclasses.replace(batch, readout=torch.stack([p[k] for p in positions])))
            for k in range(len(positions[0]))
        ], dim=1)


def _change_first_segment(model: TaggedModel, isolate_segments: bool, changed: str):
    """Segment 2's hidden states ``(2, n, d)`` and the readout states ``(2, d)`` of two prompts whose
    first segment reads ``"CCO"`` and ``changed``."""
    model.isolate_segments = isolate_segments
    batch = _batch(model, {"drug1": ["CCO", changed], "drug2": ["c1ccccc1", "c1ccccc1"]})
    with torch.no_grad():
        readout = model.readout_states(batch)
    return _segment_states(model, batch, segment=2), readout


@pytest.mark.parametrize("changed", ["CCN", "c1ccc2[nH]ccc2c1"], ids=["same-length", "longer"])
def test_isolated_segments_do_not_see_earlier_segments(tiny_backbone, changed):
    model = _model(tiny_backbone)
    states, readout = _change_first_segment(model, True, changed)
    torch.testing.assert_close(states[0], states[1], rtol=0, atol=1e-5)
    assert (readout[0] - readout[1]).abs().max() > 1e-3, "the readout still sees every segment"


def test_without_isolation_later_segments_see_earlier_ones(tiny_backbone):
    model = _model(tiny_backbone)
    tokenizer = tiny_backbone.tokenizer
    assert len(tokenizer(" CCO").input_ids) == len(tokenizer(" CCN").input_ids), "same positions either way"
    states, _ = _change_first_segment(model, False, "CCN")
    assert (states[0] - states[1]).abs().max() > 1e-3


def test_tags_must_share_one_length(tiny_llama):
    tags = [Tag("SMILES", "domain", torch.zeros(2, 64)), Tag("QED", "function", torch.zeros(3, 64))]
    with pytest.raises(ValueError, match="one length"):
        TaggedModel(tiny_llama, tags, nn.Linear(64, 1), trainable=["QED"])


def test_pooled_fields_follow_the_readout_as_each_field_s_mean_state_over_its_own_tokens(tiny_backbone):
    model = _model(tiny_backbone, isolate_segments=True)
    model.pooled_fields = 2
    batch = _batch(model)
    hidden, _ = model.hidden_states(batch)
    states = model.readout_states(batch)
    d = tiny_backbone.hidden_size
    assert states.shape == (len(batch.readout), 3 * d)
    rows = torch.arange(len(batch.readout))
    torch.testing.assert_close(states[:, :d], hidden[rows, batch.readout].float())
    for field, drugs in enumerate([VALUES["drug1"], VALUES["drug2"]], start=1):
        for row in range(len(drugs)):
            own = (batch.segments[row] == field) & (batch.tag_slots[row] < 0)
            assert own.any()
            torch.testing.assert_close(states[row, field * d:(field + 1) * d], hidden[row, own].float().mean(dim=0))


def test_pooled_layers_add_each_layer_s_field_means_as_the_backbone_computes_its_hidden_states(tiny_backbone):
    model = _model(tiny_backbone, isolate_segments=True)
    model.pooled_fields, model.pooled_layers = 2, (1, 2)
    batch = _batch(model)
    embeds = model.input_embeddings(batch)
    reference = tiny_backbone.model.base_model(
        inputs_embeds=embeds, attention_mask=model.attention_mask(batch, embeds.dtype),
        position_ids=model.position_ids(batch.segments), output_hidden_states=True).hidden_states  # [i]: layer i
    states = model.readout_states(batch)
    d = tiny_backbone.hidden_size
    assert states.shape == (len(batch.readout), (1 + 2 * 2) * d)
    for field in (1, 2):
        for row in range(len(batch.readout)):
            own = (batch.segments[row] == field) & (batch.tag_slots[row] < 0)
            for k, layer in enumerate((1, 2)):
                block = 1 + (field - 1) * 2 + k  # each field's layers in turn, after the readout
                torch.testing.assert_close(states[row, block * d:(block + 1) * d],
                                           reference[layer][row, own].float().mean(dim=0))


@pytest.mark.parametrize("layers, numbers", [
    ((-1,), (30,)), ((1.0,), (30,)), ((0.125, 0.5, 1.0), (4, 15, 30)), ((0.01,), (1,)), ((5, -26, 0.5, 30), (5, 15, 30))])
def test_pooled_layers_are_layer_numbers_from_the_end_or_fractions_of_the_depth(layers, numbers):
    assert pooled_layer_numbers(layers, 30) == numbers


@pytest.mark.parametrize("num_layers, numbers", [
    (30, (1, 2, 3, 4, 5, 6, 7, 8, 30)), (32, (1, 2, 3, 4, 5, 6, 7, 8, 32)), (24, (1, 2, 3, 4, 5, 6, 24)),
    (2, (1, 2)), (1, (1,))])
def test_early_layers_are_each_layer_of_the_first_quarter_rounded_up_and_the_final_state(num_layers, numbers):
    assert pooled_layer_numbers("early", num_layers) == numbers


def test_an_unknown_name_for_the_pooled_layers_is_refused():
    with pytest.raises(ValueError, match="the only named set of layers is 'early', got 'late'"):
        pooled_layer_numbers("late", 30)


def test_keys_values_are_read_under_the_output_name_of_older_transformers_releases_too(tiny_llama):
    model = _model(tiny_llama)
    with torch.no_grad():
        _, keys_values = model.hidden_states(_batch(model), keep_kv=True)
    assert len(keys_values) == tiny_llama.num_layers
    cache = SimpleNamespace(layers=[SimpleNamespace(keys=keys, values=values) for keys, values in keys_values])
    older = SimpleNamespace(past_key_values=cache)  # ``cache`` was ``past_key_values`` in older 5.x releases
    read = TaggedModel._keys_values(older, keep_kv=True)
    assert all(a is c and b is d for (a, b), (c, d) in zip(read, keys_values, strict=True))
