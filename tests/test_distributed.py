"""Stages 1 and 2 run data-parallel over two CPU processes (torchrun + Accelerate, gloo) like a single process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from chemtag import QEDRegressor
from chemtag.backbones import load_backbone
from chemtag.parallel import ONE_PROCESS, shard
from chemtag.stage2 import labelled_rows
from chemtag.tags import DEFAULT_TAG_LENGTH, Tag, TagLibrary

CORPUS = ["CCCCCCO", "CCCCO", "CCCCCCCCO", "CCCO", "CCCCCO", "CCCCCCCO"] * 8
ARGS = ["--domain", "SMILES", "--backbone", "tiny-llama", "--steps", "20", "--batch-size", "4",
        "--validation", "6", "--tag-length", "4", "--lr", "0.03"]
SMILES = ["C" * n + group for n in range(1, 9) for group in ("O", "N", "Cl", "C(=O)O", "c1ccccc1")]
# 32 training rows: 29 trained on (batches of 16 and 13, one for each of two processes) and 3 validation rows.
STAGE_2 = ["--task", "QED", "--backbone", "tiny-llama", "--n-train", "32", "--n-test", "8", "--max-epochs", "3",
           "--lr", "1e-3"]

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
TWO_PROCESSES = [str(TORCHRUN), "--nproc_per_node", "2"]
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="no torchrun")


def _chemtag(tmp_path: Path, launcher: list[str], arguments: list[str]) -> subprocess.CompletedProcess:
    command = [*launcher, "-m", "chemtag", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _pretrain(tmp_path: Path, name: str, launcher: list[str], extra: list[str]) -> subprocess.CompletedProcess:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    return _chemtag(tmp_path, launcher, ["pretrain", str(corpus), "-o", str(tmp_path / name), *ARGS, *extra])


@needs_torchrun
def test_two_process_pretraining_matches_single_process_behaviour(tmp_path):
    distributed = _pretrain(tmp_path, "two", TWO_PROCESSES, ["--distributed"])
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


def _stage_1_library(folder: Path) -> Path:
    """A tag library holding a <SMILES> domain tag for the tiny backbone, as stage 1 leaves one."""
    backbone = load_backbone("tiny-llama")
    vectors = torch.randn(DEFAULT_TAG_LENGTH, backbone.hidden_size, generator=torch.Generator().manual_seed(0))
    library = TagLibrary(backbone.fingerprint)
    library.add(Tag("SMILES", "domain", vectors, {"stage": 1}))
    return library.save(folder)


def _pretrain_function(tmp_path: Path, name: str, launcher: list[str], extra: list[str]) -> subprocess.CompletedProcess:
    library = tmp_path / name
    shutil.copytree(tmp_path / "stage-1", library)
    return _chemtag(tmp_path, launcher, ["pretrain-function", str(tmp_path / "smiles.txt"), "-o", str(library),
                                         "--domain-tags", str(library), *STAGE_2, *extra])


@needs_torchrun
def test_two_process_stage_2_matches_single_process_behaviour(tmp_path):
    (tmp_path / "smiles.txt").write_text("\n".join(SMILES))
    _stage_1_library(tmp_path / "stage-1")
    distributed = _pretrain_function(tmp_path, "two", TWO_PROCESSES, ["--distributed"])
    single = _pretrain_function(tmp_path, "one", [sys.executable], [])
    assert distributed.returncode == 0, distributed.stderr[-2000:]
    assert single.returncode == 0, single.stderr[-2000:]
    assert distributed.stdout.count("written to") == 1  # only the main process measures, writes and prints
    assert [p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("stage2.json")] == [
        Path("estimators/QEDRegressor/stage2.json")]
    training = labelled_rows(tmp_path / "smiles.txt", "QED", n_rows=32)
    histories = {}
    for name, processes in (("two", 2), ("one", 1)):
        folder = tmp_path / name / "estimators" / "QEDRegressor"
        recorded = json.loads((folder / "stage2.json").read_text())
        assert recorded["processes"] == processes
        assert recorded["test_mse"] < recorded["mean_predictor_test_mse"]
        model = QEDRegressor.load(folder).set_params(verbose=0)
        training_mse = np.mean((model.predict(training[["Drug"]]) - training["Y"]) ** 2)
        assert training_mse < np.var(training["Y"])  # beats the mean predictor on its training data
        histories[name] = model.history_
    two, one = histories["two"], histories["one"]
    # Epoch 0 (the probe) fits the same head to the same readouts, computed by one process or shared by two.
    assert two[0]["train_loss"] == pytest.approx(one[0]["train_loss"], rel=1e-5)
    assert two[0]["valid_loss"] == pytest.approx(one[0]["valid_loss"], rel=1e-5)
    # Epoch 1's loss is taken before each process's only step, over all training rows together: with the
    # same probe-fitted head on both processes and the losses summed across them, it is the probe's.
    # (To 1e-3: the probe's readouts came from batches padded otherwise, which the standardisation amplifies.)
    assert two[1]["train_loss"] == pytest.approx(two[0]["train_loss"], rel=1e-3)
    assert [record["epoch"] for record in two] == [0, 1, 2, 3]


def _fit_and_dump_weights(folder: Path) -> None:
    """Run by every process under torchrun: a data-parallel fit, then this process's weights to ``folder``."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    table = labelled_rows(folder / "smiles.txt", "QED", n_rows=32)
    model = QEDRegressor(backbone="tiny-llama", domain_tags=None, max_epochs=3, lr=1e-3, validation_fraction=0,
                         verbose=0)
    model._fit(table[["Drug"]], table["Y"], accelerator)
    weights = {"QED": model.tags_["QED"].vectors, **model.head_}
    torch.save({"weights": weights, "history": model.history_}, folder / f"process-{accelerator.process_index}.pt")
    accelerator.end_training()


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


@needs_torchrun
def test_every_process_ends_a_data_parallel_fit_with_the_same_trained_weights(tmp_path):
    (tmp_path / "smiles.txt").write_text("\n".join(SMILES))
    run = subprocess.run([*TWO_PROCESSES, __file__, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    first, second = (torch.load(tmp_path / f"process-{i}.pt") for i in range(2))
    for name, weight in first["weights"].items():
        assert torch.equal(weight, second["weights"][name]), name
    initial = Tag.initialise("QED", "function", load_backbone("tiny-llama"), DEFAULT_TAG_LENGTH).vectors
    assert not torch.equal(first["weights"]["QED"], initial)  # without validation rows a trained epoch is kept
    assert _without_timings(first["history"]) == _without_timings(second["history"])


def test_every_process_gets_as_many_batches_and_together_all_of_them():
    batches = list("abcde")
    shares = [shard(batches, SimpleNamespace(num_processes=3, process_index=i)) for i in range(3)]
    assert shares == [["a", "d"], ["b", "e"], ["c", "a"]]  # the start repeats to fill the last round
    assert shard(batches, ONE_PROCESS) == batches


def test_a_fit_over_several_processes_refuses_checkpoints(tmp_path):
    two_processes = SimpleNamespace(num_processes=2, process_index=0, is_main_process=True)
    model = QEDRegressor(backbone="tiny-llama", domain_tags=None, max_epochs=1, verbose=0, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="checkpoint_dir is not supported in a fit over several processes"):
        model._fit(["CCO", "CCN", "CCC"] * 4, [0.1, 0.2, 0.3] * 4, two_processes)


if __name__ == "__main__":
    _fit_and_dump_weights(Path(sys.argv[1]))
