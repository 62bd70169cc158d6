"""Zero-shot composition: the shipped ``<QED>`` function tag, trained only behind ``<SMILES>``, applied to SELFIES.

Tag-LLM's claim is that tags are modular: a function tag learned in one domain works, without
training, behind the domain tag of another. This script measures it on the shipped stage-2
:class:`~chemtag.QEDRegressor` (``QEDRegressor.pretrained()``): its held-out molecules (the split
recorded in its ``stage2.json``) are written as SELFIES and predicted by the same function tag and
head behind

- ``<SELFIES>`` from stage 1 (the tag library's; zero-shot composition),
- ``<SELFIES>`` at Tag-LLM's initialisation (no stage 1: what stage 1 contributes),
- the ``<SMILES>`` tag's vectors (SELFIES text behind the wrong domain tag),

beside the trained combination (SMILES behind ``<SMILES>``) and the mean predictor (the stage-2
training labels' mean). ``--supervised`` adds a reference that does train: a clone of the composed
estimator (the shipped one's parameters) fitted on the same training molecules written as SELFIES.

    .venv/bin/python -m benchmarks.compose --out benchmarks/results/zero-shot-qed-selfies.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import clone

from chemtag import QEDRegressor, pretrained
from chemtag.backbones import DEFAULT_BACKBONE, load_backbone
from chemtag.protocol import read_corpus
from chemtag.representations import convert
from chemtag.stage2 import labelled_rows
from chemtag.tags import Tag, TagLibrary

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "smiles_moses_100k.txt.gz"


def stage2_split(backbone_name: str, corpus: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The shipped QED estimator's provenance and its training and test rows (columns ``Drug``, ``Y``)."""
    folder = pretrained.shipped_estimator_folder(load_backbone(backbone_name), "QEDRegressor")
    if folder is None:
        raise SystemExit(f"No pretrained QEDRegressor is shipped for {backbone_name!r}.")
    provenance = json.loads((folder / "stage2.json").read_text())
    n_train = provenance["n_train"]
    rows = labelled_rows(corpus, "QED", n_train + provenance["n_test"], provenance["skipped_entries"],
                         provenance["max_length"], provenance["seed"])
    return provenance, rows.iloc[:n_train], rows.iloc[n_train:]


def stage1_overlap(corpus: Path, tag: Tag, molecules: list[str]) -> int:
    """How many of ``molecules`` (SELFIES) the stage-1 tag saw: its training and validation entries are
    the first ones of the seeded order of the converted corpus (see ``pretrain_into_library``)."""
    texts = [text for text in (convert(entry, "SMILES", "SELFIES") for entry in read_corpus(corpus)) if text]
    used = tag.provenance["validation_texts"] + tag.provenance["texts"]
    order = np.random.default_rng(tag.provenance["seed"]).permutation(len(texts))[:used]
    return len(set(molecules) & {texts[i] for i in order})


def library_with(tags: list[Tag], backbone_name: str, folder: Path) -> Path:
    """A tag library at ``folder`` holding ``tags`` for the backbone."""
    library = TagLibrary(load_backbone(backbone_name).fingerprint)
    for tag in tags:
        library.add(tag)
    return library.save(folder)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--library", default="pretrained",
                        help="tag library holding the stage-1 <SELFIES> tag (default: the shipped one)")
    parser.add_argument("--supervised", action="store_true", help="also fit a QEDRegressor on SELFIES (slow)")
    parser.add_argument("--out", type=Path, help="JSON results")
    args = parser.parse_args(argv)

    provenance, train, test = stage2_split(args.backbone, args.corpus.resolve())
    smiles, labels, train_labels = test["Drug"].tolist(), test["Y"].to_numpy(), train["Y"].to_numpy()
    selfies = [convert(text, "SMILES", "SELFIES") for text in smiles]
    model = QEDRegressor.pretrained(args.backbone, verbose=0)
    stage1 = model.with_domain("Drug", "SELFIES", args.library)
    initial = Tag.initialise("SELFIES", "domain", load_backbone(args.backbone), model.tags_["SMILES"].length)
    smiles_vectors = Tag("SELFIES", "domain", model.tags_["SMILES"].vectors.clone())
    predictions = {"mean predictor": np.full(len(labels), train_labels.mean())}
    seconds = {}

    def record(name: str, predict: Callable[[], np.ndarray]) -> None:
        started = time.perf_counter()
        predictions[name] = predict()
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: {metrics(predictions[name], labels, train_labels.mean())} ({seconds[name]} s)", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        runs = {
            "<SMILES> + <QED> on SMILES (trained together)": (model, smiles),
            "<SELFIES> (stage 1) + <QED> on SELFIES (zero-shot)": (stage1, selfies),
            "<SELFIES> (initialisation) + <QED> on SELFIES": (
                model.with_domain("Drug", "SELFIES", library_with([initial], args.backbone, Path(scratch) / "i")), selfies),
            "<SMILES> vectors + <QED> on SELFIES": (
                model.with_domain("Drug", "SELFIES", library_with([smiles_vectors], args.backbone, Path(scratch) / "s")),
                selfies),
        }
        for name, (estimator, texts) in runs.items():
            record(name, lambda: estimator.predict(texts))
    if args.supervised:
        train_selfies = [convert(text, "SMILES", "SELFIES") for text in train["Drug"]]
        record("<SELFIES> (stage 1) + <QED> trained on SELFIES (supervised reference)",
               lambda: clone(stage1).fit(train_selfies, train_labels).predict(selfies))
    results = {
        "test_molecules": len(labels), "stage2": provenance, "seconds": seconds,
        "metrics": {name: metrics(values, labels, train_labels.mean()) for name, values in predictions.items()},
        "selfies_tag": stage1.tags_["SELFIES"].provenance,
        "test_molecules_seen_in_stage1": stage1_overlap(args.corpus.resolve(), stage1.tags_["SELFIES"], selfies),
        "labels": labels.tolist(), "predictions": {name: values.tolist() for name, values in predictions.items()},
    }
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return results


def metrics(predictions: np.ndarray, labels: np.ndarray, training_mean: float) -> dict[str, float]:
    """Test MSE; Pearson r (NaN for a constant); and the MSE once the predictions are moved, without
    labels, so that their mean over the test inputs is the training labels' mean (re-centred)."""
    constant = np.ptp(predictions) == 0
    recentred = predictions - predictions.mean() + training_mean
    return {"mse": float(np.mean((predictions - labels) ** 2)),
            "pearson": float("nan") if constant else float(np.corrcoef(predictions, labels)[0, 1]),
            "recentred_mse": float(np.mean((recentred - labels) ** 2))}


def table(results: dict) -> str:
    """Markdown table: MSE, its ratio to the mean predictor's, Pearson r and the re-centred MSE."""
    mean = results["metrics"]["mean predictor"]["mse"]
    lines = ["| tags and input | test MSE | × mean predictor | Pearson r | MSE re-centred |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {m['mse']:.5f} | {m['mse'] / mean:.2f} | {m['pearson']:.3f} | {m['recentred_mse']:.5f} |"
              for name, m in results["metrics"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
