"""The frozen-prefix cache computes exactly what the full forward pass computes.

Tolerances: in float64 the cached and full paths agree to 1e-10 (readout and function-tag gradient),
which only an exact method can meet; in float32, to 1e-5 absolute on readouts and 1e-5 relative to
the largest gradient entry (float32 rounding differs between the two orders of summation).
"""

from __future__ import annotations

import dataclasses
import errno
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from chemtag.backbones import load_backbone
from chemtag.model import Batch, TaggedModel
from chemtag.prefix_cache import PrefixCache, _KVStore
from chemtag.tags import Tag
from chemtag.templates import Template, TemplateEncoder
from chemtag.training import TrainingConfig, predict, train

TEMPLATE = ("Input: The protein sequence is <Protein> {protein}. The SMILES of the drug is <SMILES> {smiles}. "
            "Output: The binding affinity is <BA>")
# Prefixes of unequal lengths; one protein in three pairs, one SMILES in three, first after the
# longest protein; the last two proteins differ but have one token length, so only their content
# tells the text after them apart.
VALUES = {
    "protein": ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVK", "MKTAYIAK", "MKTAYIAK", "MK",
                "MKTAYIAK", "MKTAYIAR", "MKTAYIKA"],
    "smiles": ["CCO", "CCO", "c1ccccc1C(=O)O", "CCN(CC)CC", "N#C", "CCO", "CCN"],
}
UNSHARED_TEMPLATE = "{smiles} binds {protein} <BA>"  # the prompts' distinct pieces hold 96% of their prefixes
TAG_LENGTH = 3
BACKBONES = ["tiny-llama", "tiny-gpt2"]


def make_model(backbone, isolate: bool, trainable=("BA",)) -> TaggedModel:
    generator = torch.Generator().manual_seed(0)
    tags = [Tag(name, kind, 0.1 * torch.randn(TAG_LENGTH, backbone.hidden_size, generator=generator))
            for name, kind in [("Protein", "domain"), ("SMILES", "domain"), ("BA", "function")]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = nn.Linear(backbone.hidden_size, 1).to(backbone.dtype)
    return TaggedModel(backbone, tags, head, list(trainable), isolate)


def encode(model: TaggedModel, values=VALUES, template=TEMPLATE):
    encoder = TemplateEncoder(Template.parse(template), model.backbone.tokenizer, model.tag_names, TAG_LENGTH)
    return encoder.encode(values)


def readout_and_gradient(model: TaggedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Readout states and the gradient of a fixed random projection of them w.r.t. the function tag."""
    states = model.readout_states(batch)
    generator = torch.Generator().manual_seed(1)  # a CPU generator: the same direction on every device
    direction = torch.randn(states.shape, generator=generator, dtype=states.dtype).to(states.device)
    (gradient,) = torch.autograd.grad((states * direction).sum(), model.tag_vectors["BA"])
    return states, gradient


def full_and_cached(model: TaggedModel, rows, **compute):
    prompts = encode(model)
    full = Batch.collate(prompts, rows, model.backbone.tokenizer.pad_token_id, model.backbone.device)
    cache = PrefixCache(model, prompts).compute(batch_size=2, **compute)
    return readout_and_gradient(model, full), readout_and_gradient(model, cache.batch(rows)), cache


@pytest.mark.parametrize("isolate", [False, True])
@pytest.mark.parametrize("name", BACKBONES)
def test_cached_path_is_exact_in_float64(name, isolate):
    model = make_model(load_backbone(name, dtype=torch.float64), isolate)
    (states, gradient), (cached_states, cached_gradient), _ = full_and_cached(model, [1, 3, 5, 0, 6, 2, 4])
    assert gradient.abs().max() > 1e-4  # the comparison below is not vacuous
    torch.testing.assert_close(cached_states, states, rtol=0, atol=1e-10)
    torch.testing.assert_close(cached_gradient, gradient, rtol=0, atol=1e-10 * gradient.abs().max().item())


@pytest.mark.parametrize("isolate", [False, True])
@pytest.mark.parametrize("name", BACKBONES)
def test_cached_path_matches_in_float32(name, isolate):
    model = make_model(load_backbone(name), isolate)
    (states, gradient), (cached_states, cached_gradient), _ = full_and_cached(model, [4, 6, 1, 5, 3])
    torch.testing.assert_close(cached_states, states, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached_gradient, gradient, rtol=0, atol=1e-5 * gradient.abs().max().item())


@pytest.mark.parametrize("name", BACKBONES)
def test_cached_keys_and_values_equal_the_full_pass(name):
    """Per-segment pieces, assembled per prompt, are the keys/values of the whole prompt."""
    model = make_model(load_backbone(name, dtype=torch.float64), isolate=True)
    prompts = encode(model)
    cache = PrefixCache(model, prompts).compute(batch_size=3)
    full = Batch.collate(prompts, range(len(prompts)), model.backbone.tokenizer.pad_token_id, "cpu")
    _, kv = model.hidden_states(full, keep_kv=True)
    prefix = cache.batch(range(len(prompts))).prefix
    for layer, (keys, values) in enumerate(kv):
        cached_keys, cached_values = prefix.layer(layer)
        for row, length in enumerate(prefix.lengths.tolist()):
            torch.testing.assert_close(cached_keys[:, row, :length], keys[row, :, :length], rtol=0, atol=1e-12)
            torch.testing.assert_close(cached_values[:, row, :length], values[row, :, :length], rtol=0, atol=1e-12)


def test_isolated_segments_are_stored_once_per_distinct_text(tiny_llama):
    model = make_model(tiny_llama, isolate=True)
    prompts = encode(model)
    assert len(prompts.input_ids[5]) == len(prompts.input_ids[6])
    cache = PrefixCache(model, prompts)
    n_proteins, n_smiles, n_prompts = len(set(VALUES["protein"])), len(set(VALUES["smiles"])), len(VALUES["protein"])
    # the opening text once, each protein and the text after it once per protein, each SMILES, each prompt's tail
    assert len(cache.pieces) == 1 + 2 * n_proteins + n_smiles + n_prompts
    assert cache.cached_tokens < cache.prefix_tokens


def test_without_isolation_prompts_that_begin_alike_share_their_leading_pieces(tiny_gpt2):
    model = make_model(tiny_gpt2, isolate=False)
    prompts = encode(model, {field: values + values[:2] for field, values in VALUES.items()})
    cache = PrefixCache(model, prompts)
    n_proteins, n_pairs = len(set(VALUES["protein"])), len(set(zip(*VALUES.values())))
    # the opening text, <Protein> and the protein once per protein; the text, <SMILES>, the SMILES and the
    # closing text once per distinct pair: the two repeated prompts add nothing
    assert len(cache.pieces) == n_proteins + n_pairs
    whole_prefixes = PrefixCache(model, dataclasses.replace(prompts, spans=None))
    assert len(whole_prefixes.pieces) == n_pairs  # prompts without a template's spans: one piece per prefix
    assert cache.cached_tokens < whole_prefixes.cached_tokens


@pytest.mark.parametrize("isolate", [False, True])
def test_fields_without_domain_tags_share_a_leading_field_exactly(isolate):
    """The stage-3 ablation's prompts: no domain segments, so only the template's spans cut them."""
    model = make_model(load_backbone("tiny-llama", dtype=torch.float64), isolate)
    prompts = encode(model, template=TEMPLATE.replace("<Protein> ", "").replace("<SMILES> ", ""))
    cache = PrefixCache(model, prompts).compute(batch_size=2)
    assert len(cache.pieces) == len(set(VALUES["protein"])) + len(set(zip(*VALUES.values())))
    rows = list(range(len(prompts)))
    full = Batch.collate(prompts, rows, model.backbone.tokenizer.pad_token_id, "cpu")
    torch.testing.assert_close(model.readout_states(cache.batch(rows)), model.readout_states(full), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", BACKBONES)
def test_isolated_segment_does_not_depend_on_other_segments_length(name):
    """The position layout: the SMILES segment's states are the same after a short or a long protein."""
    model = make_model(load_backbone(name), isolate=True)
    prompts = encode(model, {"protein": ["MK", "MKTAYIAKQRQISFVKSHF"], "smiles": ["CCO", "CCO"]})
    hidden, _ = model.hidden_states(Batch.collate(prompts, [0, 1], model.backbone.tokenizer.pad_token_id, "cpu"))
    smiles = [np.flatnonzero(segments == 2) for segments in prompts.segments]
    assert len(smiles[0]) == len(smiles[1]) and smiles[0][0] != smiles[1][0]
    torch.testing.assert_close(hidden[0, smiles[0]], hidden[1, smiles[1]], rtol=0, atol=1e-5)


@pytest.mark.parametrize("physical_memory, place", [(2**40, "on disk"), (2**10, "on disk, token-major")])
def test_spilled_cache_reads_back_the_same(tiny_llama, monkeypatch, physical_memory, place):
    """A spilled file is layer-major while the page cache can hold it, token-major beyond."""
    monkeypatch.setattr("chemtag.prefix_cache._physical_memory_bytes", lambda: physical_memory)
    model = make_model(tiny_llama, isolate=True)
    prompts = encode(model)
    in_memory = PrefixCache(model, prompts).compute(batch_size=2)
    on_disk = PrefixCache(model, prompts).compute(batch_size=2, memory_bytes=0)
    assert on_disk.describe().endswith(f"MB {place}") and "in memory" in in_memory.describe()
    rows = [0, 3, 1]
    torch.testing.assert_close(model.readout_states(on_disk.batch(rows)), model.readout_states(in_memory.batch(rows)),
                               rtol=0, atol=0)


def test_train_and_predict_release_a_spilled_cache_s_file_when_they_end(tiny_llama, monkeypatch):
    opened = []
    temporary_file = tempfile.TemporaryFile
    monkeypatch.setattr("chemtag.prefix_cache.tempfile.TemporaryFile",
                        lambda **kwargs: opened.append(temporary_file(**kwargs)) or opened[-1])
    model = make_model(tiny_llama, isolate=True)
    prompts = encode(model)
    config = TrainingConfig(max_epochs=1, batch_size=2, validation_fraction=0, verbose=0, cache_memory_bytes=0)
    train(model, prompts, torch.linspace(-1, 1, len(prompts))[:, None], nn.functional.mse_loss, config)
    predict(model, prompts, batch_size=2, prefix_cache=True, cache_memory_bytes=0)
    assert len(opened) == 2 and all(file.closed for file in opened)


@pytest.mark.parametrize("physical_memory", [None, 2**40, 2**10])
def test_a_spilled_store_gathers_what_was_written_in_either_layout(monkeypatch, physical_memory):
    monkeypatch.setattr("chemtag.prefix_cache._physical_memory_bytes", lambda: physical_memory)
    layout, n_tokens = (3, 2, 4), 7
    values = torch.randn(3, 2, 2, n_tokens, 4)
    store = _KVStore(n_tokens, layout, torch.float32, memory_bytes=0)
    assert store.on_disk and store.token_major == (physical_memory == 2**10)
    store.write(0, values[:, :, :, :4])
    store.write(4, values[:, :, :, 4:])
    index = torch.tensor([[6, 0, 2], [3, 3, 5]])
    gathered = store.gather(index)
    assert gathered.shape == (3, 2, 2, 2, 3, 4) and gathered.is_contiguous()
    torch.testing.assert_close(gathered, values[:, :, :, index], rtol=0, atol=0)
    store.close()


def test_the_store_holds_keys_and_values_on_the_backbone_s_device():
    """Device placement without a GPU: the meta device allocates nothing but keeps the tensors' device."""
    store = _KVStore(5, (2, 1, 4), torch.float32, memory_bytes=2**20, device="meta")
    assert store.data.device.type == "meta" and not store.on_disk
    assert store.gather(torch.tensor([[0, 3], [4, 4]])).shape == (2, 2, 1, 2, 2, 4)
    assert store.gather(torch.tensor([[0, 3]])).device.type == "meta"
    assert store.describe() == "0 MB in meta memory"


def test_a_device_short_of_memory_spills_the_store_to_disk(monkeypatch):
    empty = torch.empty

    def short_of_memory_off_the_cpu(*args, device="cpu", **kwargs):
        if torch.device(device).type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return empty(*args, device=device, **kwargs)

    monkeypatch.setattr(torch, "empty", short_of_memory_off_the_cpu)
    store = _KVStore(5, (2, 1, 4), torch.float32, memory_bytes=2**20, device="meta")
    assert store.on_disk and store.data.device.type == "cpu"
    store.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_backbone_s_cache_lives_in_gpu_memory_and_matches_the_full_pass():
    model = make_model(load_backbone("tiny-llama", device="cuda"), isolate=True)
    (states, gradient), (cached_states, cached_gradient), cache = full_and_cached(model, [1, 3, 5, 0])
    assert "cuda" in cache.describe()
    torch.testing.assert_close(cached_states, states, rtol=0, atol=1e-5)


def test_a_closed_cache_must_be_computed_again(tiny_llama):
    model = make_model(tiny_llama, isolate=True)
    cache = PrefixCache(model, encode(model)).compute(batch_size=2, memory_bytes=0)
    cache.close()
    with pytest.raises(RuntimeError, match=r"Call compute\(\) before reading"):
        cache.batch([0])


@pytest.mark.parametrize("pooled_fields", [0, 2])
@pytest.mark.parametrize("name", BACKBONES)
def test_bfloat16_cache_is_close_to_the_bfloat16_full_path(name, pooled_fields):
    model = make_model(load_backbone(name), isolate=True)
    model.pooled_fields, model.pooled_layers = pooled_fields, (1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (states, _), (cached_states, _), _ = full_and_cached(model, list(range(len(VALUES["protein"]))), bf16=True)
    assert states.dtype == cached_states.dtype == torch.float32
    assert states.shape[1] == (1 + 2 * pooled_fields) * model.backbone.hidden_size
    assert (cached_states - states).abs().max() < 0.05 * states.abs().max()


def test_only_the_function_tag_and_head_get_gradients(tiny_llama):
    model = make_model(tiny_llama, isolate=True)
    batch = PrefixCache(model, encode(model)).compute().batch([0, 1])
    model(batch).sum().backward()
    assert model.tag_vectors["BA"].grad is not None and model.head.weight.grad is not None
    assert model.tag_vectors["Protein"].grad is None and model.tag_vectors["SMILES"].grad is None


def test_cache_refuses_to_train_domain_tags(tiny_llama):
    model = make_model(tiny_llama, isolate=False, trainable=("BA", "Protein"))
    cache = PrefixCache(model, encode(model)).compute()
    with pytest.raises(RuntimeError, match="domain tags"):
        cache.batch([0])
    with torch.no_grad():  # predicting through it is fine
        assert model(cache.batch([0])).shape == (1, 1)


def fit(model: TaggedModel, prefix_cache: bool) -> list[dict]:
    prompts = encode(model)
    targets = torch.linspace(-1, 1, len(prompts))[:, None]
    config = TrainingConfig(max_epochs=2, batch_size=2, lr=1e-2, validation_fraction=0.4, verbose=0,
                            prefix_cache=prefix_cache)
    return train(model, prompts, targets, nn.functional.mse_loss, config)


@pytest.mark.parametrize("isolate", [False, True])
def test_training_with_and_without_the_cache_gives_the_same_fit(tiny_llama, isolate):
    cached, full = make_model(tiny_llama, isolate), make_model(tiny_llama, isolate)
    cached_history, full_history = fit(cached, prefix_cache=True), fit(full, prefix_cache=False)
    for record, expected in zip(cached_history, full_history):
        assert record["train_loss"] == pytest.approx(expected["train_loss"], abs=1e-5)
        assert record["valid_loss"] == pytest.approx(expected["valid_loss"], abs=1e-5)
    torch.testing.assert_close(cached.tag_vectors["BA"], full.tag_vectors["BA"], rtol=0, atol=1e-5)
    assert not torch.equal(cached.tag_vectors["BA"], make_model(tiny_llama, isolate).tag_vectors["BA"])


def test_training_domain_tags_bypasses_the_cache(tiny_llama, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the prefix cache was built while domain tags train")

    monkeypatch.setattr(PrefixCache, "compute", refuse)
    model = make_model(tiny_llama, isolate=False, trainable=("BA", "Protein"))
    before = model.tag_vectors["Protein"].detach().clone()
    fit(model, prefix_cache=True)
    assert not torch.equal(model.tag_vectors["Protein"], before)


ONE_PROTEIN = {"protein": VALUES["protein"][:1] * 4, "smiles": ["CCO", "N#C", "CCN", "c1ccccc1C(=O)O"]}


@pytest.mark.parametrize("isolate, prefix_cache, template, values, uses_cache", [
    (True, True, TEMPLATE, VALUES, True), (False, True, TEMPLATE, VALUES, True),
    (True, None, TEMPLATE, VALUES, True),  # repeated segments: the distinct pieces are about 2/3 of the prefix tokens
    (False, None, TEMPLATE, ONE_PROTEIN, True),  # one long protein before each drug: shared by all prompts
    (False, None, UNSHARED_TEMPLATE, VALUES, False),  # prompts that differ from the start share little
])
def test_predict_through_the_cache_matches(tiny_gpt2, monkeypatch, isolate, prefix_cache, template, values,
                                           uses_cache):
    model = make_model(tiny_gpt2, isolate)
    prompts = encode(model, values, template)
    expected = predict(model, prompts, batch_size=2, prefix_cache=False)
    computed = []
    compute = PrefixCache.compute
    monkeypatch.setattr(PrefixCache, "compute", lambda self, *a, **k: computed.append(self) or compute(self, *a, **k))
    outputs = predict(model, prompts, batch_size=2, prefix_cache=prefix_cache)
    assert bool(computed) == uses_cache
    torch.testing.assert_close(outputs, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("trainable, uses_cache", [(("BA",), True), (("BA", "Protein"), False)])
def test_bf16_predictions_take_the_path_training_took(tiny_gpt2, monkeypatch, trainable, uses_cache):
    """Prompts that share little would skip the cache; under bf16 a model trained through it uses it."""
    model = make_model(tiny_gpt2, isolate=False, trainable=trainable)
    computed = []
    compute = PrefixCache.compute
    monkeypatch.setattr(PrefixCache, "compute", lambda self, *a, **k: computed.append(self) or compute(self, *a, **k))
    predict(model, encode(model, template=UNSHARED_TEMPLATE), batch_size=2, bf16=True)
    assert bool(computed) == uses_cache


def _disk_filled_by_another_process(fd, offset, length):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("full_disk", ["seen before the file is made", "filled before its blocks are reserved"])
def test_a_cache_that_fits_nowhere_falls_back_to_the_full_pass(tiny_llama, monkeypatch, caplog, full_disk):
    if full_disk == "seen before the file is made":
        monkeypatch.setattr("chemtag.prefix_cache.shutil.disk_usage", lambda path: SimpleNamespace(free=0))
    else:
        monkeypatch.setattr("chemtag.prefix_cache.os.posix_fallocate", _disk_filled_by_another_process, raising=False)
    model, reference = make_model(tiny_llama, isolate=True), make_model(tiny_llama, isolate=True)
    prompts = encode(model)
    targets = torch.linspace(-1, 1, len(prompts))[:, None]
    config = TrainingConfig(max_epochs=1, batch_size=2, validation_fraction=0, verbose=0, cache_memory_bytes=0)
    history = train(model, prompts, targets, nn.functional.mse_loss, config)
    assert "without the prefix cache" in caplog.text
    assert {record["prefix_cache"] for record in history} == {False}
    expected = train(reference, prompts, targets, nn.functional.mse_loss,
                     dataclasses.replace(config, prefix_cache=False))
    assert history[0]["train_loss"] == expected[0]["train_loss"]


@pytest.mark.parametrize("layers", [(2,), (1, 2)])
@pytest.mark.parametrize("isolate", [False, True])
@pytest.mark.parametrize("name", BACKBONES)
def test_pooled_field_states_through_the_cache_are_exact_in_float64(name, isolate, layers):
    model = make_model(load_backbone(name, dtype=torch.float64), isolate)
    model.pooled_fields, model.pooled_layers = 2, layers
    (states, gradient), (cached_states, cached_gradient), cache = full_and_cached(model, [1, 3, 5, 0, 6, 2, 4])
    d = model.backbone.hidden_size
    assert states.shape[1] == (1 + 2 * len(layers)) * d and states[:, d:].abs().max() > 1e-3  # the field means
    torch.testing.assert_close(cached_states, states, rtol=0, atol=1e-10)
    torch.testing.assert_close(cached_gradient, gradient, rtol=0, atol=1e-10 * gradient.abs().max().item())
