"""Tags: Tag-LLM's initialisation, and a library that round-trips exactly, checks and never unpickles."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from chemtag.tags import FORMAT_VERSION, Tag, TagLibrary, initial_tag_vectors

TENSORS, MANIFEST = "tags.safetensors", "manifest.json"


def test_initialisation_is_the_mean_embedding_rescaled_to_the_mean_norm():
    weight = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # mean (1, 1), every row of norm 2
    expected = torch.full((3, 2), 2.0 ** 0.5)
    torch.testing.assert_close(initial_tag_vectors(weight, length=3), expected)


def test_initialised_tag_on_a_backbone(tiny_llama):
    weight = tiny_llama.model.get_input_embeddings().weight
    tag = Tag.initialise("SMILES", "domain", tiny_llama, length=4)
    assert tag.vectors.shape == (4, tiny_llama.hidden_size) and tag.vectors.dtype == torch.float32
    assert tag.length == 4 and tag.kind == "domain"
    mean_norm = weight.norm(dim=1).mean()
    torch.testing.assert_close(tag.vectors.norm(dim=1), mean_norm.expand(4))
    cosine = torch.nn.functional.cosine_similarity(tag.vectors, weight.mean(dim=0).expand(4, -1), dim=1)
    torch.testing.assert_close(cosine, torch.ones(4))
    assert not tag.vectors.requires_grad


def test_tag_rejects_unknown_kind_and_bad_shape():
    with pytest.raises(ValueError, match="kind"):
        Tag("X", "task", torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(p, d\)"):
        Tag("X", "domain", torch.zeros(4))


@pytest.fixture
def library(tiny_llama) -> TagLibrary:
    generator = torch.Generator().manual_seed(0)
    tags = [
        Tag("SMILES", "domain", torch.randn(3, 64, generator=generator), {"stage": "domain", "corpus": "moses"}),
        Tag("QED", "function", torch.randn(3, 64, generator=generator), {"stage": "function", "mse": 0.25}),
    ]
    library = TagLibrary(tiny_llama.fingerprint)
    for tag in tags:
        library.add(tag)
    return library


def test_round_trip_is_exact(library, tiny_llama, tmp_path):
    library.save(tmp_path / "tags")
    loaded = TagLibrary.load(tmp_path / "tags", tiny_llama)
    assert loaded.fingerprint == tiny_llama.fingerprint
    assert set(loaded.tags) == {"SMILES", "QED"}
    for name, tag in library.tags.items():
        assert torch.equal(loaded[name].vectors, tag.vectors)
        assert (loaded[name].kind, loaded[name].provenance) == (tag.kind, tag.provenance)


def test_manifest_records_backbone_shapes_kinds_and_provenance(library, tiny_llama, tmp_path):
    library.save(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["backbone"] == tiny_llama.fingerprint
    assert manifest["tags"]["QED"] == {"kind": "function", "length": 3, "width": 64,
                                       "provenance": {"stage": "function", "mse": 0.25}}


def test_library_refuses_a_tag_of_another_width(library):
    with pytest.raises(ValueError, match="hidden size 64"):
        library.add(Tag("Wide", "domain", torch.zeros(3, 65)))


def test_unknown_tag_names_the_available_ones(library):
    with pytest.raises(KeyError, match="QED"):
        library["BA"]


def test_mismatched_backbone_is_refused(library, tiny_gpt2, tmp_path):
    library.save(tmp_path)
    message = "trained for backbone 'tiny-llama', not for 'tiny-gpt2'"
    with pytest.raises(ValueError, match=message) as error:
        TagLibrary.load(tmp_path, tiny_gpt2)
    assert "config_sha256" in str(error.value)
    assert "Tags only work on the backbone they were trained on" in str(error.value)


def test_same_name_with_another_config_is_refused(library, tiny_llama, tmp_path):
    library.save(tmp_path)
    other = dict(tiny_llama.fingerprint, config_sha256="0" * 16)
    with pytest.raises(ValueError, match="config_sha256"):
        TagLibrary.load(tmp_path, other)


def test_loading_without_a_backbone_keeps_the_recorded_fingerprint(library, tiny_llama, tmp_path):
    library.save(tmp_path)
    assert TagLibrary.load(tmp_path).fingerprint == tiny_llama.fingerprint


def test_corrupted_tensors_are_refused(library, tiny_llama, tmp_path):
    library.save(tmp_path)
    data = bytearray((tmp_path / TENSORS).read_bytes())
    data[-1] ^= 0xFF  # the last byte belongs to a tensor value
    (tmp_path / TENSORS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        TagLibrary.load(tmp_path, tiny_llama)


def test_newer_format_is_refused(library, tiny_llama, tmp_path):
    library.save(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="Upgrade chemtag"):
        TagLibrary.load(tmp_path, tiny_llama)


def test_missing_manifest_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a tag library"):
        TagLibrary.load(tmp_path)


def test_library_is_json_and_safetensors_and_loads_without_pickle(library, tiny_llama, tmp_path, monkeypatch):
    library.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, TENSORS]
    data = (tmp_path / TENSORS).read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])  # safetensors: u64 size, JSON header
    assert set(header) - {"__metadata__"} == {"SMILES", "QED"}

    def refuse(*args, **kwargs):
        raise AssertionError("a tag library must never be unpickled")

    for module, name in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    loaded = TagLibrary.load(tmp_path, tiny_llama)
    assert torch.equal(loaded["QED"].vectors, library["QED"].vectors)
