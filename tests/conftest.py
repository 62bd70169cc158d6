"""Shared fixtures: tiny backbones, a clean backbone registry, the shared data folder, tiny TDC files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
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


@pytest.fixture
def tdc_data(tmp_path) -> Path:
    """A folder in PyTDC's cache layout holding two tiny benchmarks in TDC's columns, 24 ``train_val`` and
    10 ``test`` rows each: ``dti_dg_group/bindingdb_patent/*.csv`` (``Drug_ID, Drug, Target_ID, Target,
    Y, Year``) and ``drugcombo_group/drugcomb_css/*.pkl`` (``Drug1_ID, Drug1, Drug2_ID, Drug2,
    Cell_Line_ID, CellLine, Y``; ``CellLine`` a tuple of three arrays per row, 9 numbers per cell line)."""
    rng = np.random.default_rng(0)
    drugs = ["CCO", "c1ccccc1O", "CC(=O)O", "CCN", "OCC(O)CO", "CC(C)O", "CCCCCC", "c1ccncc1"]
    proteins = ["MKVLAAGIVGLLLAQ", "MSTAVLENPGLGRKLSDFGQETSYIEDN", "MGHHHHHHSSGLVPRGS"]
    cells = {f"cell{i}": (rng.normal(size=4), rng.normal(size=3), rng.normal(size=2)) for i in range(3)}

    def binding(n: int, years: list[int]) -> pd.DataFrame:
        drug, target = rng.integers(0, len(drugs), n), rng.integers(0, len(proteins), n)
        return pd.DataFrame({"Drug_ID": [f"D{i}" for i in drug], "Drug": [drugs[i] for i in drug],
                             "Target_ID": [f"T{i}" for i in target], "Target": [proteins[i] for i in target],
                             "Y": rng.normal(6, 1, n), "Year": rng.choice(years, n)})

    def combination(n: int) -> pd.DataFrame:
        first, second = rng.integers(0, 4, n), rng.integers(4, len(drugs), n)
        cell = rng.choice(list(cells), n)
        return pd.DataFrame({"Drug1_ID": [f"D{i}" for i in first], "Drug1": [drugs[i] for i in first],
                             "Drug2_ID": [f"D{i}" for i in second], "Drug2": [drugs[i] for i in second],
                             "Cell_Line_ID": cell, "CellLine": [cells[c] for c in cell], "Y": rng.normal(10, 20, n)})

    root = tmp_path / "tdc"
    bindingdb, drugcomb = root / "dti_dg_group" / "bindingdb_patent", root / "drugcombo_group" / "drugcomb_css"
    for folder in (bindingdb, drugcomb):
        folder.mkdir(parents=True)
    binding(24, [2013, 2016, 2018]).to_csv(bindingdb / "train_val.csv", index=False)
    binding(10, [2019, 2021]).to_csv(bindingdb / "test.csv", index=False)
    combination(24).to_pickle(drugcomb / "train_val.pkl")
    combination(10).to_pickle(drugcomb / "test.pkl")
    return root
