"""Tag-LLM's stage 2: single-domain function tags trained on labels computed from an in-domain corpus.

The labels cost nothing: RDKit's QED of SMILES, a Biopython descriptor of protein sequences. The
task's preset estimator trains its function tag and head over the frozen stage-1 domain tag, and
the fitted estimator is saved into a tag library folder as ``estimators/<class name>/`` with the
measured held-out error, where :meth:`TagLLMEstimator.pretrained` finds it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from chemtag.descriptors import protein_descriptor, qed
from chemtag.domains import get_domain
from chemtag.estimators import ProteinDescriptorRegressor, QEDRegressor
from chemtag.estimators._base import TagLLMEstimator
from chemtag.parallel import ONE_PROCESS, Processes
from chemtag.protocol import read_corpus
from chemtag.tags import file_sha256


@dataclass(frozen=True)
class FunctionTask:
    """A stage-2 task: the preset that learns it, its input domain and column, and the labeller."""

    estimator: type[TagLLMEstimator]
    domain: str
    column: str
    label: Callable[[Iterable[str]], np.ndarray]


FUNCTION_TASKS = {
    "QED": FunctionTask(QEDRegressor, "SMILES", "Drug", qed),
    "Descriptor": FunctionTask(ProteinDescriptorRegressor, "Protein", "Target", protein_descriptor),
}


def labelled_rows(corpus: str | Path, task: str, n_rows: int, skip: int = 0, max_length: int | None = None,
                  seed: int = 0) -> pd.DataFrame:
    """``n_rows`` corpus entries with their labels, as a table (the task's input column and ``Y``).

    Entries are taken in the order of a ``seed`` permutation of the valid, normalised corpus (the order
    :func:`chemtag.protocol.pretrain_into_library` uses), after its first ``skip`` entries, e.g. the
    ones stage 1 trained on; entries longer than ``max_length`` characters are passed over.
    """
    function_task = FUNCTION_TASKS[task]
    normalise = get_domain(function_task.domain).normalise
    texts = [text for text in (normalise(entry) for entry in read_corpus(corpus)) if text]
    order = np.random.default_rng(seed).permutation(len(texts))[skip:]
    chosen = [texts[i] for i in order if max_length is None or len(texts[i]) <= max_length][:n_rows]
    if len(chosen) < n_rows:
        raise ValueError(f"{corpus} has only {len(chosen)} usable entries after skipping {skip}; asked for {n_rows}.")
    table = pd.DataFrame({function_task.column: chosen})
    table["Y"] = function_task.label(chosen)
    return table


_RECORDED_SETTINGS = ("lr", "batch_size", "max_epochs", "patience", "head_training", "pool_fields",
                      "pool_layers", "bf16")


def pretrain_function_estimator(corpus: str | Path, task: str, library_folder: str | Path, *, n_train: int,
                                n_test: int = 200, skip: int = 0, max_length: int | None = None, seed: int = 0,
                                processes: Processes = ONE_PROCESS, **params) -> dict:
    """Stage 2 end to end: label ``n_train + n_test`` held-apart corpus entries, fit the task's preset
    (``params`` are its parameters), measure the test MSE against the training mean's, and save the
    estimator into ``library_folder/estimators/<class name>/`` with that provenance in ``stage2.json``
    (with the training settings and each epoch's validation loss, epoch 0 being the head's probe).
    Returns the provenance.

    Under ``accelerate launch`` pass the ``Accelerator`` as ``processes``: every process labels the same
    rows and the fit runs data-parallel over them (see :func:`chemtag.training.train`); only the main
    process measures and writes, and the others return an empty dict."""
    started = time.perf_counter()
    function_task = FUNCTION_TASKS[task]
    table = labelled_rows(corpus, task, n_train + n_test, skip, max_length, seed)
    train, test = table.iloc[:n_train], table.iloc[n_train:]
    model = function_task.estimator(random_state=seed, **params)
    model._fit(train[[function_task.column]], train["Y"], processes)
    if not processes.is_main_process:
        processes.wait_for_everyone()
        return {}
    predictions = model.predict(test[[function_task.column]])
    validated = [record for record in model.history_ if "valid_loss" in record]
    best = min(validated, key=lambda record: record["valid_loss"], default=None)
    settings = model.get_params()
    provenance = {
        "stage": 2, "task": task, "estimator": type(model).__name__, "corpus": Path(corpus).name,
        "corpus_sha256": file_sha256(Path(corpus)), "seed": seed, "skipped_entries": skip,
        "max_length": max_length, "n_train": n_train, "n_test": n_test,
        "test_mse": float(np.mean((predictions - test["Y"]) ** 2)),
        "mean_predictor_test_mse": float(np.mean((train["Y"].mean() - test["Y"]) ** 2)),
        "training": {name: settings[name] for name in _RECORDED_SETTINGS},
        "best_epoch": best["epoch"] if best else None, "epochs_run": model.history_[-1]["epoch"],
        "valid_loss_by_epoch": [round(record["valid_loss"], 6) for record in validated],
        "processes": processes.num_processes, "seconds": round(time.perf_counter() - started, 1),
    }
    folder = model.save(Path(library_folder) / "estimators" / type(model).__name__)
    text = json.dumps(provenance, indent=1)
    (folder / "stage2.json").write_text(text)
    processes.wait_for_everyone()
    return json.loads(text)  # as stage2.json holds it: tuples become lists
