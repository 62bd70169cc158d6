"""Shared fixtures: tiny backbones, a clean backbone registry, the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chemtag import backbones
from chemtag.backbones import Backbone, load_backbone

SHARED_DATA = (Path(__file__).parents[1] / "../shared/data").resolve()


@pytest.fixture(autouse=True)
def _single_torch_thread(request):
    """Run tiny models on one thread: at their size thread synchronisation costs more than it saves,
    by far on a busy machine. Tests marked ``slow`` (the real backbone) keep torch's default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_llama() -> Backbone:
    return load_backbone("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2() -> Backbone:
    return load_backbone("tiny-gpt2")


@pytest.fixture(params=["tiny-llama", "tiny-gpt2"])
def tiny_backbone(request) -> Backbone:
    """Each tiny backbone in turn: a Llama-style (rotary) and a GPT-2-style (learned positions) model."""
    return load_backbone(request.param)


@pytest.fixture
def fresh_backbones(monkeypatch) -> dict:
    """An empty per-process backbone registry for the test, so loads really load (and fakes do not leak)."""
    registry: dict = {}
    monkeypatch.setattr(backbones, "_LOADED", registry)
    return registry


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder next to the project (``../shared/data``); skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA
