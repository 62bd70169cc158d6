"""Checkpoints on disk: a fit interrupted or killed midway, run again, ends as an uninterrupted fit would.

The training loop's fits are all one small fit (60 rows of noise, a validation quarter, batches of 8:
six steps an epoch; a LinearHead, so that epoch 0 is its initialisation); interrupted ones, and the
estimator's, stop at the second training step after epoch 2's checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from sklearn.base import clone

from chemtag import QEDRegressor
from chemtag.heads import LinearHead
from chemtag.losses import squared_error
from chemtag.model import TaggedModel
from chemtag.losses import LossFunction
from chemtag.training import train
from test_training import _assert_same_state, _config, _model, _noise, _prompts, _strings, _without_timings, mse

ROWS = 60
SMILES = ["CCO", "c1ccccc1", "CCN", "CC(=O)O", "CCCC", "c1ccncc1", "CC(C)O", "OCCO", "CCOC", "C1CCCCC1", "CCCl", "CCBr"]


def _press_ctrl_c() -> None:
    raise KeyboardInterrupt


@functools.wraps(mse)
def _never_called(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mse`` by name (the checkpoint's fingerprint names the loss), but never to be called."""
    raise AssertionError("a completed fit trained again")


class InterruptingLoss:
    """``loss`` that calls ``interrupt`` at its ``step``-th training call (one with gradients) once
    ``checkpoint`` exists: in the middle of the epoch after that checkpoint's. It carries ``loss``'s name,
    so that the fit it interrupts resumes with ``loss`` itself."""

    def __init__(self, checkpoint: Path, interrupt: Callable[[], None] = _press_ctrl_c, loss: LossFunction = mse,
                 step: int = 2):
        functools.update_wrapper(self, loss)
        self.checkpoint, self.interrupt, self.loss, self.step = checkpoint, interrupt, loss, step
        self.steps_since_checkpoint = 0

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.requires_grad and self.checkpoint.is_dir():
            self.steps_since_checkpoint += 1
            if self.steps_since_checkpoint == self.step:
                self.interrupt()
        return self.loss(outputs, targets)


def _fit(backbone, checkpoint_dir: Path | None = None, loss: LossFunction = mse, targets_seed: int = 0,
         groups: np.ndarray | None = None, **settings) -> tuple[TaggedModel, list[dict]]:
    """The fit every test repeats, 4 epochs after epoch 0 unless ``settings`` say otherwise."""
    model = _model(backbone, head=LinearHead(backbone.hidden_size, 1))
    config = _config(**{"max_epochs": 4, "patience": 4, **settings}, checkpoint_dir=checkpoint_dir)
    history = train(model, _prompts(model, _strings(ROWS, seed=3)), _noise(ROWS, targets_seed), loss, config,
                    groups=groups)
    return model, history


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("head_training", ["joint", "refit"])
def test_a_fit_interrupted_midway_resumes_to_the_uninterrupted_result(tiny_llama, tmp_path, head_training):
    _, interrupted = _fit(tiny_llama, tmp_path, InterruptingLoss(tmp_path / "epoch-0002"), head_training=head_training)
    assert [record["epoch"] for record in interrupted] == [0, 1, 2], "interrupted during epoch 3"

    resumed, history = _fit(tiny_llama, tmp_path, head_training=head_training)
    assert history[:3] == interrupted, "epochs 0 to 2 come from the checkpoint, timings included"
    reference, reference_history = _fit(tiny_llama, head_training=head_training)
    _assert_same_state(resumed, reference)
    assert _without_timings(history) == _without_timings(reference_history)


_KILLED_FIT = """
import os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from chemtag.backbones import load_backbone
from test_checkpoint import InterruptingLoss, _fit
folder = Path(sys.argv[2])
_fit(load_backbone("tiny-llama"), folder,
     InterruptingLoss(folder / "epoch-0002", interrupt=lambda: os.kill(os.getpid(), signal.SIGKILL)))
"""


def test_a_killed_fit_resumes_to_the_uninterrupted_result(tiny_llama, tmp_path):
    command = [sys.executable, "-c", _KILLED_FIT, str(Path(__file__).parent), str(tmp_path)]
    killed = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
                            cwd=Path(__file__).parents[1])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["epoch-0002"]

    resumed, history = _fit(tiny_llama, tmp_path)
    reference, reference_history = _fit(tiny_llama)
    _assert_same_state(resumed, reference)
    assert _without_timings(history) == _without_timings(reference_history)


def test_a_completed_fit_run_again_returns_its_result_without_training(tiny_llama, tmp_path):
    first, history = _fit(tiny_llama, tmp_path, max_epochs=1)
    again, again_history = _fit(tiny_llama, tmp_path, _never_called, max_epochs=1)
    assert again_history == history
    _assert_same_state(again, first)


def test_an_early_stopped_fit_is_complete_too(tiny_llama, tmp_path):
    settings = dict(max_epochs=30, lr=5e-2, patience=1)
    _, history = _fit(tiny_llama, tmp_path, **settings)
    assert len(history) < 1 + settings["max_epochs"], "stopped early"
    _, again_history = _fit(tiny_llama, tmp_path, _never_called, **settings)
    assert again_history == history


@pytest.mark.parametrize("other, difference", [
    (dict(targets_seed=1), "targets"),
    (dict(lr=0.5), "training.lr"),
    (dict(max_epochs=2), "training.max_epochs"),
    (dict(head_training="refit"), "training.head_training"),
    (dict(loss=torch.nn.functional.l1_loss), "loss"),
    (dict(groups=np.arange(ROWS) // 2), "groups"),
])
def test_a_checkpoint_of_another_fit_is_refused_and_kept(tiny_llama, tmp_path, other, difference):
    _fit(tiny_llama, tmp_path, max_epochs=1)
    saved = _files(tmp_path)
    message = (f"{tmp_path} holds a checkpoint of a different fit (it differs in {difference}). Delete that folder "
               f"to start this fit afresh, or choose another checkpoint_dir.")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _fit(tiny_llama, tmp_path, **{"max_epochs": 1, **other})
    assert _files(tmp_path) == saved


def test_a_partial_loss_fits_with_checkpoints_and_its_arguments_tell_fits_apart(tiny_llama, tmp_path):
    huber = functools.partial(torch.nn.functional.huber_loss, delta=1.0)
    _fit(tiny_llama, tmp_path, huber, max_epochs=1)
    with pytest.raises(ValueError, match=r"differs in loss\)"):
        _fit(tiny_llama, tmp_path, functools.partial(torch.nn.functional.huber_loss, delta=2.0), max_epochs=1)


def _flip_a_tensor_byte(checkpoint: Path) -> None:
    path = checkpoint / "tensors.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_the_json(checkpoint: Path) -> None:
    path = checkpoint / "checkpoint.json"
    path.write_text(path.read_text()[:100])


def _raise_the_format_version(checkpoint: Path) -> None:
    path = checkpoint / "checkpoint.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"format_version": 99}))


@pytest.mark.parametrize("damage, message", [
    (_flip_a_tensor_byte, "tensors.safetensors does not match its checksum in checkpoint.json: the checkpoint is "
                          "corrupted"),
    (_truncate_the_json, "checkpoint.json is not valid JSON"),
    (_raise_the_format_version, "format version 99; this chemtag reads versions up to 1"),
])
def test_a_damaged_checkpoint_is_refused(tiny_llama, tmp_path, damage, message):
    _fit(tiny_llama, tmp_path, max_epochs=1)
    damage(tmp_path / "epoch-0001")
    with pytest.raises(ValueError, match=message):
        _fit(tiny_llama, tmp_path, max_epochs=1)


def test_a_checkpoint_is_safetensors_and_json_and_loads_without_unpickling(tiny_llama, tmp_path, monkeypatch):
    _, interrupted = _fit(tiny_llama, tmp_path, InterruptingLoss(tmp_path / "epoch-0002"))
    assert list(_files(tmp_path)) == ["epoch-0002/checkpoint.json", "epoch-0002/tensors.safetensors"], \
        "one checkpoint, the last"

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    _, history = _fit(tiny_llama, tmp_path)
    assert history[:3] == interrupted


def test_an_estimator_refit_after_an_interruption_predicts_as_an_uninterrupted_one(tmp_path, monkeypatch):
    params = dict(backbone="tiny-llama", max_epochs=3, batch_size=4, verbose=0)
    targets = np.linspace(0, 1, len(SMILES))
    model = QEDRegressor(checkpoint_dir=tmp_path, **params)
    monkeypatch.setattr(QEDRegressor, "_loss", InterruptingLoss(tmp_path / "epoch-0002", loss=squared_error))
    model.fit(SMILES, targets)
    assert [record["epoch"] for record in model.history_] == [0, 1, 2], "Ctrl-C during epoch 3 keeps the best so far"

    monkeypatch.undo()
    model.fit(SMILES, targets)
    reference = QEDRegressor(**params).fit(SMILES, targets)
    np.testing.assert_array_equal(model.predict(SMILES), reference.predict(SMILES))
    assert _without_timings(model.history_) == _without_timings(reference.history_)


def test_a_completed_kernel_head_fit_run_again_fits_its_kernel_head_to_the_same_readouts(tmp_path):
    params = dict(backbone="tiny-llama", head="kernel", max_epochs=1, verbose=0, checkpoint_dir=tmp_path)
    targets = np.linspace(0, 1, len(SMILES))
    first = QEDRegressor(**params).fit(SMILES, targets)
    again = QEDRegressor(**params).fit(SMILES, targets)
    assert again.history_ == first.history_, "returned from the checkpoint, not trained again"
    np.testing.assert_allclose(again.predict(SMILES), first.predict(SMILES), rtol=1e-6)


def test_an_estimator_with_a_checkpoint_folder_clones_and_saves_like_any_other(tmp_path):
    model = QEDRegressor(backbone="tiny-llama", max_epochs=1, verbose=0, checkpoint_dir=tmp_path / "checkpoint")
    assert clone(model).get_params() == model.get_params()
    loaded = QEDRegressor.load(model.fit(SMILES, np.linspace(0, 1, len(SMILES))).save(tmp_path / "model"))
    assert loaded.checkpoint_dir == str(tmp_path / "checkpoint")
    np.testing.assert_array_equal(loaded.predict(SMILES), model.predict(SMILES))
