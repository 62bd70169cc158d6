"""On-disk checkpoints of a fit, so that a killed process can resume it where it stopped.

:func:`~chemtag.training.train` writes one after every epoch into ``checkpoint_dir``, as a folder
named by the epoch::

    epoch-0003/
        checkpoint.json       format version, the fit's fingerprint, whether the fit is complete, history,
                              early-stopping counters, numpy's random state, the optimizer's settings,
                              the checksum of the tensors
        tensors.safetensors   model state, best model state, the optimizer's moments and steps, torch's
                              random state, the training and validation rows

A checkpoint is written into a temporary sibling folder (``.epoch-0003.*``) and renamed into place,
so every ``epoch-*`` folder is complete; the older ones are removed after the rename. Loading reads
safetensors and JSON only (nothing is unpickled), checks the checksum, and refuses a checkpoint of
another fit: one whose :func:`fit_fingerprint` differs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from chemtag.tags import file_sha256, read_versioned_json

if TYPE_CHECKING:
    from chemtag.model import TaggedModel
    from chemtag.templates import EncodedPrompts
    from chemtag.training import TrainingConfig

FORMAT_VERSION = 1
_JSON_FILE = "checkpoint.json"
_TENSORS_FILE = "tensors.safetensors"
_FOLDER_NAME = re.compile(r"epoch-(\d+)")
_PARTIAL_PREFIX = ".epoch-"
# TrainingConfig fields that change how a fit runs, not what it computes (``prefix_cache`` is not one:
# the cached attention differs from the uncached one in the last bits).
_RUN_SETTINGS = ("verbose", "cache_memory_bytes", "checkpoint_dir")
# TrainingConfig fields added after checkpoints were first written, with the value that the fits before
# them had: left out of the fingerprint at that value, so that those checkpoints still resume.
_LATER_SETTINGS = {"head_training": "joint"}


@dataclass
class TrainingState:
    """Everything the rest of a fit depends on, at the end of an epoch.

    ``model`` and ``best_model`` are ``state_dict()``s (``best_model`` None before any epoch improved);
    ``optimizer`` is AdamW's ``state_dict()``; ``numpy_rng`` the ``bit_generator.state`` of the
    Generator that draws the batch order; ``torch_rng`` ``(5056,)`` uint8 torch's CPU random state;
    ``train_rows`` and ``valid_rows`` the split of the prompts' rows.
    """

    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor] | None
    optimizer: dict
    history: list[dict]
    best_loss: float
    stale_epochs: int
    numpy_rng: dict
    torch_rng: torch.Tensor
    train_rows: np.ndarray
    valid_rows: np.ndarray
    complete: bool

    @property
    def epoch(self) -> int:
        return self.history[-1]["epoch"]


class Checkpoint:
    """The checkpoints of one fit in ``folder``: ``fingerprint`` (from :func:`fit_fingerprint`) says which fit."""

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def save(self, state: TrainingState) -> Path:
        """Write ``state`` as ``epoch-<n>`` atomically, then remove older checkpoints; the new folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"epoch-{state.epoch:04d}"
        partial = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.folder))
        save_file(_tensors(state), partial / _TENSORS_FILE)
        metadata = _metadata(state, self.fingerprint, file_sha256(partial / _TENSORS_FILE))
        (partial / _JSON_FILE).write_text(json.dumps(metadata, indent=1))
        _flush_to_disk(partial)
        os.replace(partial, final)
        self._remove_all_but(final)
        return final

    def load(self) -> TrainingState | None:
        """The latest checkpoint, or None where there is none; refuses a corrupted one or another fit's."""
        latest = self._latest()
        if latest is None:
            return None
        metadata = read_versioned_json(latest / _JSON_FILE, "chemtag training checkpoint", FORMAT_VERSION)
        differences = _differences(metadata["fingerprint"], self.fingerprint)
        if differences:
            raise ValueError(
                f"{self.folder} holds a checkpoint of a different fit (it differs in {', '.join(differences)}). "
                f"Delete that folder to start this fit afresh, or choose another checkpoint_dir."
            )
        tensors_path = latest / _TENSORS_FILE
        if file_sha256(tensors_path) != metadata["tensors_sha256"]:
            raise ValueError(f"{tensors_path} does not match its checksum in {_JSON_FILE}: the checkpoint is "
                             f"corrupted. Delete {self.folder} to start the fit afresh.")
        return _state(load_file(tensors_path), metadata)

    def _latest(self) -> Path | None:
        return latest_checkpoint(self.folder)

    def _remove_all_but(self, keep: Path) -> None:
        """Remove older checkpoints and temporary folders left by an interrupted write."""
        for path in self.folder.iterdir():
            ours = _FOLDER_NAME.fullmatch(path.name) or path.name.startswith(_PARTIAL_PREFIX)
            if ours and path.is_dir() and path != keep:
                shutil.rmtree(path)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint folder of the highest epoch in ``folder``, if any."""
    folders = {int(match[1]): path for path in Path(folder).glob("epoch-*")
               if path.is_dir() and (match := _FOLDER_NAME.fullmatch(path.name))}
    return folders[max(folders)] if folders else None


def saved_progress(checkpoint: Path) -> tuple[int, bool]:
    """The last epoch a checkpoint folder holds and whether its fit is complete (from its JSON only)."""
    metadata = read_versioned_json(checkpoint / _JSON_FILE, "chemtag training checkpoint", FORMAT_VERSION)
    return metadata["history"][-1]["epoch"], metadata["complete"]


def fit_fingerprint(model: TaggedModel, prompts: EncodedPrompts, targets: torch.Tensor, loss_fn: Callable,
                    config: TrainingConfig, first_epoch: int, groups: np.ndarray | None = None) -> dict:
    """What a fit computes from, as JSON values and SHA-256 digests: the backbone, the starting model
    (tags, head, which tags train), the prompts' tokens, the targets, the loss (by name: see
    :func:`_callable_name`), the training settings, the epoch it starts at (a warm start is another fit)
    and the rows' groups where given. Equal for the same fit in any process."""
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in _RUN_SETTINGS and (k not in _LATER_SETTINGS or v != _LATER_SETTINGS[k])}
    fingerprint = {
        "backbone": model.backbone.fingerprint,
        "model": {
            "state": _digest(model.state_dict()),
            "trainable": [name for name, p in model.named_parameters() if p.requires_grad],
            "isolate_segments": model.isolate_segments,
        },
        "prompts": _digest({
            "lengths": torch.from_numpy(prompts.lengths),
            "input_ids": torch.from_numpy(np.concatenate(prompts.input_ids).astype(np.int64)),
            "tag_slots": torch.from_numpy(np.concatenate(prompts.tag_slots).astype(np.int64)),
            "segments": torch.from_numpy(np.concatenate(prompts.segments).astype(np.int64)),
            "readout": torch.from_numpy(prompts.readout.astype(np.int64)),
        }),
        "targets": _digest({"targets": targets}),
        "loss": _callable_name(loss_fn),
        "training": settings,
        "first_epoch": first_epoch,
    }
    if groups is not None:
        fingerprint["groups"] = _digest({"groups": torch.from_numpy(np.asarray(groups, dtype=np.int64))})
    return json.loads(json.dumps(fingerprint))  # as read back from a file: tuples become lists


def _callable_name(function: Callable) -> str:
    """``module.qualname`` of a function, or of a callable object's class; a ``functools.partial`` also
    with its arguments. (Functions are told apart by name only: two lambdas of one module look alike.)"""
    if isinstance(function, functools.partial):
        return f"{_callable_name(function.func)}(*{function.args!r}, **{function.keywords!r})"
    named = function if hasattr(function, "__qualname__") else type(function)
    return f"{named.__module__}.{named.__qualname__}"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _differences(recorded: dict, expected: dict, prefix: str = "") -> list[str]:
    """Names of the entries that differ, nested dicts entry by entry (``training.lr``)."""
    names = []
    for key in sorted(recorded.keys() | expected.keys()):
        old, new = recorded.get(key), expected.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            names += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            names.append(prefix + key)
    return names


def _tensors(state: TrainingState) -> dict[str, torch.Tensor]:
    """The state's tensors under flat names: ``model/<key>``, ``best/<key>``, ``optimizer/<index>/<name>``,
    ``torch_rng``, ``train_rows``, ``valid_rows``."""
    tensors = {f"model/{key}": value for key, value in state.model.items()}
    tensors |= {f"best/{key}": value for key, value in (state.best_model or {}).items()}
    tensors |= {f"optimizer/{index}/{name}": value
                for index, values in state.optimizer["state"].items() for name, value in values.items()}
    tensors |= {"torch_rng": state.torch_rng, "train_rows": torch.from_numpy(state.train_rows),
                "valid_rows": torch.from_numpy(state.valid_rows)}
    return {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}


def _metadata(state: TrainingState, fingerprint: dict, tensors_sha256: str) -> dict:
    """The JSON half of a checkpoint."""
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "complete": state.complete,
        "history": state.history,
        "best_loss": state.best_loss,
        "stale_epochs": state.stale_epochs,
        "numpy_rng": state.numpy_rng,
        "optimizer_param_groups": state.optimizer["param_groups"],
        "tensors_sha256": tensors_sha256,
    }


def _state(tensors: dict[str, torch.Tensor], metadata: dict) -> TrainingState:
    """A :class:`TrainingState` from a checkpoint's tensors and JSON."""
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in _under(tensors, "optimizer").items():
        index, _, name = key.partition("/")
        optimizer_state.setdefault(int(index), {})[name] = value
    return TrainingState(
        model=_under(tensors, "model"),
        best_model=_under(tensors, "best") or None,
        optimizer={"state": optimizer_state, "param_groups": metadata["optimizer_param_groups"]},
        history=metadata["history"],
        best_loss=metadata["best_loss"],
        stale_epochs=metadata["stale_epochs"],
        numpy_rng=metadata["numpy_rng"],
        torch_rng=tensors["torch_rng"],
        train_rows=tensors["train_rows"].numpy(),
        valid_rows=tensors["valid_rows"].numpy(),
        complete=metadata["complete"],
    )


def _under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``<prefix>/<rest>``, by ``rest``."""
    return {name[len(prefix) + 1:]: value for name, value in tensors.items() if name.startswith(prefix + "/")}


def _flush_to_disk(folder: Path) -> None:
    """Flush the folder's files to disk, so that a renamed checkpoint is whole even after a power cut."""
    for path in folder.iterdir():
        with open(path, "r+b") as handle:
            os.fsync(handle.fileno())
