"""The main job on the embedded default: fit a tagged QED regressor on bundled SMILES and report MSE."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from chemtag.datasets import demo_smiles
from chemtag.descriptors import qed
from chemtag.estimators import QEDRegressor
from chemtag.validation import canonical_smiles


def run_demo(n_train: int = 800, n_test: int = 200, max_epochs: int = 10, seed: int = 0, verbose: int = 1) -> dict:
    """Fit :class:`QEDRegressor` on ``n_train`` ChEMBL SMILES (QED labels from RDKit) with the default
    backbone; return held-out MSE for the model and for predicting the training mean."""
    smiles = [s for s in demo_smiles() if canonical_smiles(s) and len(s) <= 80]
    rows = np.random.default_rng(seed).permutation(len(smiles))[: n_train + n_test]
    table = pd.DataFrame({"Drug": [smiles[i] for i in rows]})
    table["QED"] = qed(table["Drug"])
    train, test = table.iloc[:n_train], table.iloc[n_train:]
    started = time.perf_counter()
    model = QEDRegressor(max_epochs=max_epochs, random_state=seed, verbose=verbose)
    model.fit(train[["Drug"]], train["QED"])
    predictions = model.predict(test[["Drug"]])
    return {
        "n_train": n_train,
        "n_test": n_test,
        "mse": float(np.mean((predictions - test["QED"]) ** 2)),
        "mean_predictor_mse": float(np.mean((train["QED"].mean() - test["QED"]) ** 2)),
        "seconds": time.perf_counter() - started,
    }
