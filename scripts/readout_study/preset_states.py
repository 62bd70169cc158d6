"""What the probe studies share: a benchmark task's seeded rows, its preset's untrained model, ridge probes.

``layer_probe.py`` and ``pooling_probe.py`` import it (run from the project root with ``PYTHONPATH=.``;
the script's own folder is on the path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from benchmarks.runner import load_data
from benchmarks.tasks import TASKS, Rows
from chemtag.model import TaggedModel
from chemtag.templates import EncodedPrompts, Template

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


def preset_states(task_name: str, n_train: int, n_test: int, seed: int, max_residues: int | None,
                  pool_fields: bool) -> PresetStates:
    """Seeded train/test rows of the benchmark task (fold 0; proteins cut to ``max_residues``, ``None`` whole)
    through its preset with ``pool_fields`` as given."""
    task = TASKS[task_name]
    data = load_data(task, Rows(n_train, n_test, max_residues), 0, seed)
    X = pd.concat([data.X_train, data.X_test], ignore_index=True)
    estimator = task.estimator(protein_alphabet="extended", pool_fields=pool_fields)
    fields = estimator._fields(X)
    estimator.fields_, estimator.template_ = fields, estimator.template
    template = Template.parse(estimator.template_)
    model = estimator._new_model(estimator._backbone(), template, features=None)
    model.head = nn.Identity()
    prompts = estimator._encoder(template, model).encode({column: list(X[column]) for column in fields})
    return PresetStates(model, prompts, np.concatenate([data.y_train, data.y_test]).astype(float),
                        len(data.X_train))


def mean_predictor_mse(y: np.ndarray, n_train: int) -> float:
    """Test MSE of predicting the training rows' mean."""
    return float(np.mean((y[n_train:] - y[:n_train].mean()) ** 2))


def ridge_probe(features: np.ndarray, y: np.ndarray, n_train: int) -> tuple[float, float]:
    """Test MSE and chosen penalty of a ridge probe (features standardised on the training rows, penalty by
    leave-one-out over :data:`ALPHAS`) fitted on the first ``n_train`` rows and scored on the rest."""
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(features[:n_train], y[:n_train])
    return float(np.mean((probe.predict(features[n_train:]) - y[n_train:]) ** 2)), float(probe[-1].alpha_)
