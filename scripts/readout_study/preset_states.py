"""What the probe studies share: a benchmark task's seeded rows, its preset's untrained model, the states its
head reads (kept in a file on request), ridge probes.

``layer_probe.py``, ``pooling_probe.py``, ``head_probe.py``, ``field_kernel_probe.py``,
``representation_swap.py``, ``probe_first.py``, ``bf16_paths.py`` and ``oneil_probe.py`` import it (run
from the project root with ``PYTHONPATH=.``; the script's own folder is on the path).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from benchmarks.runner import load_data
from benchmarks.tasks import TASKS, Rows
from chemtag.heads import LinearHead
from chemtag.losses import squared_error
from chemtag.model import EARLY_LAYERS, TaggedModel
from chemtag.templates import EncodedPrompts, Template
from chemtag.training import predict

ALPHAS = np.logspace(-2, 5, 15)


@dataclass
class PresetStates:
    """A task's rows (training rows first, ``n_train`` of them) through its preset's prompt: the model, with
    the untrained function tag, the shipped domain tags and its head replaced by the identity (so that
    ``predict`` returns the head's input: the readout, then the pooled fields' means where the preset pools
    them) and the encoded prompts; ``y`` ``(n,)`` the labels."""

    model: TaggedModel
    prompts: EncodedPrompts
    y: np.ndarray
    n_train: int


def study_parser(description: str, max_residues: int = 64) -> argparse.ArgumentParser:
    """The arguments every probe study takes: the task, its training and test rows, the seed, the protein
    crop (``max_residues`` by default; 0 keeps proteins whole), the torch threads, the pooled layers,
    whether proteins are written one residue a token and whether the domain tags are the shipped ones."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--task", default="qed")
    parser.add_argument("--n-train", type=int, default=2500)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-residues", type=int, default=max_residues, help="protein crop; 0 keeps proteins whole")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pool-layers", type=_layers, default=(-1,),
                        help="layers whose field means the head reads: early (the estimators' default), or "
                             "comma-separated numbers (negative from the end) or fractions of the depth, e.g. "
                             "0.125,0.5,1.0; default -1, the final layer")
    parser.add_argument("--spaced-proteins", action="store_true",
                        help="write each protein residue as a word of its own ('M K T ...': one token each)")
    parser.add_argument("--init-domain-tags", action="store_true",
                        help="domain tags at Tag-LLM's initialisation instead of the shipped stage-1 tags")
    return parser


def _layers(text: str) -> tuple[int | float, ...] | str:
    if text == EARLY_LAYERS:
        return text
    return tuple(float(item) if "." in item else int(item) for item in text.split(","))


def study_states(args: argparse.Namespace, pool_fields: bool) -> PresetStates:
    """:func:`preset_states` for the arguments of :func:`study_parser`, on ``args.threads`` torch threads."""
    torch.set_num_threads(args.threads)
    options = {"domain_tags": None} if args.init_domain_tags else {}
    return preset_states(args.task, args.n_train, args.n_test, args.seed, args.max_residues or None, pool_fields,
                         spaced_proteins=args.spaced_proteins, pool_layers=args.pool_layers, **options)


def head_inputs(states: PresetStates, **options) -> np.ndarray:
    """What the model's head reads for every prompt, ``(n, width)``: :func:`~chemtag.training.predict` with
    ``options``, timed."""
    started = time.perf_counter()
    features = predict(states.model, states.prompts, verbose=1, **options).numpy()
    print(f"states of {len(features):,} prompts: {time.perf_counter() - started:.0f} s", flush=True)
    return features


@dataclass
class HeadInputs:
    """What the head reads for a study's rows (training rows first, ``n_train`` of them): ``features``
    ``(n, (1 + fields * layers) * hidden_size)``, the readout then each pooled field's means, and the labels
    ``y`` ``(n,)``."""

    features: np.ndarray
    y: np.ndarray
    n_train: int
    hidden_size: int
    fields: int

    def field_columns(self) -> list[slice]:
        """The columns of each pooled field's means, in the template's order."""
        width = (self.features.shape[1] - self.hidden_size) // self.fields
        return [slice(self.hidden_size + k * width, self.hidden_size + (k + 1) * width) for k in range(self.fields)]


def saved_head_inputs(args: argparse.Namespace, path: Path | None, **options) -> HeadInputs:
    """:func:`head_inputs` (with ``options``) of the rows of :func:`study_states` with pooled fields, kept in
    the ``.npz`` file ``path`` and read back from it when it exists."""
    if path and path.exists():
        saved = np.load(path)
        return HeadInputs(saved["features"], saved["y"], *(int(saved[key]) for key in ("n_train", "d", "fields")))
    states = study_states(args, pool_fields=True)
    inputs = HeadInputs(head_inputs(states, **options), states.y, states.n_train,
                        states.model.backbone.hidden_size, states.model.pooled_fields)
    if path:
        np.savez(path, features=inputs.features, y=inputs.y, n_train=inputs.n_train, d=inputs.hidden_size,
                 fields=inputs.fields)
    return inputs


def preset_states(task_name: str, n_train: int, n_test: int, seed: int, max_residues: int | None,
                  pool_fields: bool, spaced_proteins: bool = False, **options) -> PresetStates:
    """Seeded train/test rows of the benchmark task (fold 0; proteins cut to ``max_residues``, ``None`` whole,
    and with ``spaced_proteins`` a space between residues) through its preset with ``pool_fields`` and the
    estimator parameters ``options`` as given; fields are pooled in the final layer only unless ``options``
    names ``pool_layers``."""
    task = TASKS[task_name]
    data = load_data(task, Rows(n_train, n_test, max_residues), 0, seed)
    X = pd.concat([data.X_train, data.X_test], ignore_index=True)
    if spaced_proteins:
        X = X.assign(**{column: X[column].map(" ".join) for column in task.columns("protein")})
    options = {"pool_layers": (-1,)} | options
    estimator = task.estimator(protein_alphabet="extended", pool_fields=pool_fields, **options)
    model, prompts = untrained_model(estimator, X)
    return PresetStates(model, prompts, np.concatenate([data.y_train, data.y_test]).astype(float),
                        len(data.X_train))


def untrained_model(estimator, X: pd.DataFrame) -> tuple[TaggedModel, EncodedPrompts]:
    """The model ``estimator`` would start a fit on ``X`` from (its untrained function tag and the domain tags
    it loads), with the head replaced by the identity so that ``predict`` returns the head's input, and the
    prompts of ``X``'s rows."""
    fields = estimator._fields(X)
    estimator.fields_, estimator.template_ = fields, estimator.template
    template = Template.parse(estimator.template_)
    model = estimator._new_model(estimator._backbone(), template, features=None)
    model.head = nn.Identity()
    return model, estimator._encoder(template, model).encode({column: list(X[column]) for column in fields})


def probe_head(features: np.ndarray, y: np.ndarray, n_train: int, hidden_size: int) -> LinearHead:
    """The estimator's linear head initialised (standardisation and probe) on the first ``n_train`` rows of
    ``features`` ``(n, blocks * hidden_size)`` and labels ``y`` ``(n,)``, as a fit's epoch 0 initialises it."""
    head = LinearHead(hidden_size, 1, blocks=features.shape[1] // hidden_size)
    head.initialise(torch.from_numpy(features[:n_train]).float(), torch.from_numpy(y[:n_train]).float(),
                    squared_error)
    return head


def mean_predictor_mse(y: np.ndarray, n_train: int) -> float:
    """Test MSE of predicting the training rows' mean."""
    return float(np.mean((y[n_train:] - y[:n_train].mean()) ** 2))


def ridge_probe(features: np.ndarray, y: np.ndarray, n_train: int) -> tuple[float, float]:
    """Test MSE and chosen penalty of a ridge probe (features standardised on the training rows, penalty by
    leave-one-out over :data:`ALPHAS`) fitted on the first ``n_train`` rows and scored on the rest."""
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(features[:n_train], y[:n_train])
    return float(np.mean((probe.predict(features[n_train:]) - y[n_train:]) ** 2)), float(probe[-1].alpha_)
