"""The zero-shot composition benchmark (``python -m benchmarks.compose``) end to end on the tiny backbone."""

import json

import numpy as np

import pytest
import torch

from benchmarks import compose
from chemtag import pretrained
from chemtag.representations import convert
from chemtag.stage2 import labelled_rows, pretrain_function_estimator
from chemtag.tags import Tag, TagLibrary

MOLECULES = ["C" * n + group for n in range(1, 9) for group in ("O", "N", "Cl", "C(=O)O", "c1ccccc1")]


@pytest.fixture
def shipped_qed(tmp_path, monkeypatch, tiny_llama):
    """A shipped tiny-backbone library with <SMILES>, a stage-1 <SELFIES> that saw the first 10 molecules,
    and a stage-2 QEDRegressor trained on 16 molecules after the first 10 and tested on the next 8."""
    monkeypatch.setattr(pretrained, "SHIPPED", tmp_path / "shipped")
    corpus = tmp_path / "smiles.txt"
    corpus.write_text("\n".join(MOLECULES))
    library = TagLibrary(tiny_llama.fingerprint)
    library.add(Tag("SMILES", "domain", torch.randn(10, 64), {"stage": 1}))
    library.add(Tag("SELFIES", "domain", torch.randn(10, 64), {"stage": 1, "texts": 8, "validation_texts": 2, "seed": 0}))
    folder = library.save(tmp_path / "shipped" / "tiny-llama")
    pretrain_function_estimator(corpus, "QED", folder, n_train=16, n_test=8, skip=10, backbone="tiny-llama",
                                max_epochs=1, verbose=0, validation_fraction=0)
    return corpus


def test_compose_reports_every_combination_against_the_mean_predictor(shipped_qed, tmp_path):
    results = compose.main(["--backbone", "tiny-llama", "--corpus", str(shipped_qed), "--out", str(tmp_path / "r.json")])
    assert (tmp_path / "r.json").read_text() == json.dumps(results, indent=1)
    assert list(results["metrics"]) == [
        "mean predictor",
        "<SMILES> + <QED> on SMILES (trained together)",
        "<SELFIES> (stage 1) + <QED> on SELFIES (zero-shot)",
        "<SELFIES> (initialisation) + <QED> on SELFIES",
        "<SMILES> vectors + <QED> on SELFIES",
    ]
    assert results["test_molecules"] == 8 and results["test_molecules_seen_in_stage1"] == 0
    assert len({m["mse"] for m in results["metrics"].values()}) == 5, "each combination predicts differently"
    assert len(results["predictions"]["mean predictor"]) == len(results["labels"]) == 8


def test_stage1_overlap_counts_the_molecules_the_domain_tag_trained_on(shipped_qed):
    tag = Tag("SELFIES", "domain", torch.zeros(1, 64), {"texts": 8, "validation_texts": 2, "seed": 0})
    first = labelled_rows(shipped_qed, "QED", 12)["Drug"].map(lambda s: convert(s, "SMILES", "SELFIES")).tolist()
    assert compose.stage1_overlap(shipped_qed, tag, first) == 10


def test_the_supervised_reference_trains_on_selfies(shipped_qed, monkeypatch):
    seen = []
    fit = compose.QEDRegressor.fit
    monkeypatch.setattr(compose.QEDRegressor, "fit", lambda self, X, y: seen.append(list(X)) or fit(self, X, y))
    results = compose.main(["--backbone", "tiny-llama", "--corpus", str(shipped_qed), "--supervised"])
    assert "<SELFIES> (stage 1) + <QED> trained on SELFIES (supervised reference)" in results["metrics"]
    assert len(seen) == 1 and len(seen[0]) == 16 and all(text.startswith("[") for text in seen[0])


def test_metrics_recentre_predictions_on_the_training_mean_without_labels():
    labels = np.array([0.2, 0.4, 0.6])
    shifted = labels + 1.0  # perfectly correlated, off by a constant
    found = compose.metrics(shifted, labels, training_mean=0.4)
    assert found["mse"] == pytest.approx(1.0) and found["pearson"] == pytest.approx(1.0)
    assert found["recentred_mse"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(compose.metrics(np.full(3, 0.4), labels, 0.4)["pearson"])
