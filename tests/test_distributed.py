"""Stage 1 runs data-parallel over two CPU processes (torchrun + Accelerate, gloo) like a single process."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chemtag.backbones import load_backbone
from chemtag.tags import TagLibrary

CORPUS = ["CCCCCCO", "CCCCO", "CCCCCCCCO", "CCCO", "CCCCCO", "CCCCCCCO"] * 8
ARGS = ["--domain", "SMILES", "--backbone", "tiny-llama", "--steps", "20", "--batch-size", "4",
        "--validation", "6", "--tag-length", "4", "--lr", "0.03"]


def _pretrain(tmp_path: Path, name: str, launcher: list[str], extra: list[str]) -> subprocess.CompletedProcess:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    command = [*launcher, "-m", "chemtag", "pretrain", str(corpus), "-o", str(tmp_path / name), *ARGS, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_two_process_pretraining_matches_single_process_behaviour(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    distributed = _pretrain(tmp_path, "two", [torchrun, "--nproc_per_node", "2"], ["--distributed"])
    single = _pretrain(tmp_path, "one", [sys.executable], [])
    assert distributed.returncode == 0, distributed.stderr[-2000:]
    assert single.returncode == 0, single.stderr[-2000:]
    assert distributed.stdout.count("written to") == 1  # only the main process measures and writes
    backbone = load_backbone("tiny-llama")
    for name, processes in (("two", 2), ("one", 1)):
        tag = TagLibrary.load(tmp_path / name, backbone)["SMILES"]
        losses = tag.provenance["held_out_loss_nats_per_token"]
        assert tag.provenance["processes"] == processes
        assert losses["trained_tag"] < losses["initial_tag"]  # the loss goes down in both runs
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["manifest.json", "tags.safetensors"]
