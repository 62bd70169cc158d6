"""Would a nonlinear head read more than the linear one? Probes of several kinds on the same frozen states.

The estimator's head is linear on the readout and the pooled fields' mean states (``pool_fields=True``).
This study takes those states for a benchmark task's seeded train/test subsample (the preset's template,
shipped domain tags, untrained function tag, float32, full passes), standardises them on the training
rows and fits, on the training rows only, a ridge probe (penalty by leave-one-out, as in
``pooling_probe.py``), kernel ridge with RBF, Laplacian and degree-2 polynomial kernels, and a one-layer
MLP (each kernel's penalty and width, and the MLP's penalty, by 5-fold cross-validation on the training
rows), then prints each one's test MSE beside the mean predictor's. For the RBF and Laplacian kernels it
also fits ridge on their Nyström features with a few hundred training rows as landmarks: what such a
head keeps when it stores only those rows instead of every training row.

    PYTHONPATH=. .venv/bin/python scripts/readout_study/head_probe.py --task qed --n-train 2500 --n-test 500

``--states FILE.npz`` keeps the computed states and reads them back on the next run with the same arguments.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.kernel_approximation import Nystroem
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import RidgeCV
from sklearn.metrics import pairwise_distances
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from preset_states import mean_predictor_mse, ridge_probe, saved_head_inputs, study_parser

WIDTHS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
"""Kernel widths ``gamma`` in units of ``1 / features``."""
PENALTIES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
"""Kernel ridge penalties."""
FOLDS = 5
NYSTROEM_KERNELS = {"RBF": "rbf", "Laplacian": "laplacian"}
LANDMARKS = (250, 500)


def kernels(features: np.ndarray, n_train: int) -> dict[str, Callable[[float], np.ndarray]]:
    """Each kernel ``(n, n)`` over all rows as a function of its width ``gamma`` (features standardised
    on the training rows; the distances are computed once)."""
    x = StandardScaler().fit(features[:n_train]).transform(features)
    gram = x @ x.T
    squared = np.maximum(np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2 * gram, 0)
    manhattan = pairwise_distances(x, metric="manhattan")
    return {"RBF": lambda gamma: np.exp(-gamma * squared),
            "Laplacian": lambda gamma: np.exp(-gamma * manhattan),
            "polynomial (degree 2)": lambda gamma: (gamma * gram + 1) ** 2}


def kernel_ridge(kernel: np.ndarray, y: np.ndarray, penalty: float, fitted: np.ndarray,
                 predicted: np.ndarray) -> np.ndarray:
    """Kernel ridge on rows ``fitted`` (targets centred on their mean), predicting rows ``predicted``."""
    offset = y[fitted].mean()
    model = KernelRidge(alpha=penalty, kernel="precomputed").fit(kernel[np.ix_(fitted, fitted)], y[fitted] - offset)
    return model.predict(kernel[np.ix_(predicted, fitted)]) + offset


def cross_validated_kernel_ridge(kernel_of: Callable[[float], np.ndarray], y: np.ndarray, n_train: int,
                                 n_features: int) -> tuple[np.ndarray, float, float]:
    """Test predictions of kernel ridge with the width and penalty of least 5-fold CV error on the training
    rows (interleaved folds); the chosen width (in units of ``1 / features``) and penalty."""
    train, test = np.arange(n_train), np.arange(n_train, len(y))
    fold = train % FOLDS
    best = (np.inf, None, None)
    for width in WIDTHS:
        kernel = kernel_of(width / n_features)
        for penalty in PENALTIES:
            error = sum(np.sum((kernel_ridge(kernel, y, penalty, train[fold != k], train[fold == k])
                                - y[train[fold == k]]) ** 2) for k in range(FOLDS))
            best = min(best, (error, width, penalty), key=lambda b: b[0])
    _, width, penalty = best
    return kernel_ridge(kernel_of(width / n_features), y, penalty, train, test), width, penalty


def nystroem_ridge(kernel: str, gamma: float, landmarks: int, features: np.ndarray, y: np.ndarray,
                   n_train: int) -> tuple[float, float]:
    """Test MSE and penalty (by leave-one-out) of ridge on the Nyström features of ``kernel`` with
    ``landmarks`` random training rows: what the kernel keeps when a head stores only that many rows."""
    model = make_pipeline(StandardScaler(), Nystroem(kernel=kernel, gamma=gamma, n_components=landmarks,
                                                     random_state=0), RidgeCV(alphas=PENALTIES))
    model.fit(features[:n_train], y[:n_train])
    return float(np.mean((model.predict(features[n_train:]) - y[n_train:]) ** 2)), float(model[-1].alpha_)


def mlp() -> TransformedTargetRegressor:
    """One hidden layer of 256 ReLUs on standardised features and targets, its penalty by 5-fold CV."""
    network = MLPRegressor(hidden_layer_sizes=(256,), early_stopping=True, max_iter=500, random_state=0)
    model = GridSearchCV(network, {"alpha": [1.0, 10.0, 100.0]}, cv=FOLDS)
    return TransformedTargetRegressor(make_pipeline(StandardScaler(), model), transformer=StandardScaler())


def main() -> None:
    # The degree-2 polynomial kernel's matrix is singular at small penalties: scikit-learn then solves the
    # dual problem by least squares, and says so for every fit of the grid.
    warnings.filterwarnings("ignore", message="Singular matrix in solving dual problem")
    parser = study_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=Path, help="an .npz file that keeps the computed states")
    args = parser.parse_args()

    inputs = saved_head_inputs(args, args.states, batch_size=16, prefix_cache=False)
    features, y, n_train = inputs.features, inputs.y, inputs.n_train
    mean_mse = mean_predictor_mse(y, n_train)
    print(f"{args.task}, {n_train:,} train / {len(y) - n_train:,} test, seed {args.seed}, "
          f"{features.shape[1]} features; mean predictor MSE {mean_mse:.5g}")
    print("| head | test MSE | / mean predictor's | chosen |\n|---|---|---|---|")
    mse, penalty = ridge_probe(features, y, n_train)
    print(f"| linear (ridge) | {mse:.5g} | {mse / mean_mse:.3f} | penalty {penalty:.3g} |", flush=True)
    n_features = features.shape[1]
    for name, kernel_of in kernels(features, n_train).items():
        predicted, width, penalty = cross_validated_kernel_ridge(kernel_of, y, n_train, n_features)
        mse = float(np.mean((predicted - y[n_train:]) ** 2))
        print(f"| kernel ridge, {name} | {mse:.5g} | {mse / mean_mse:.3f} | width {width:.3g}, penalty {penalty:.3g} |",
              flush=True)
        if name in NYSTROEM_KERNELS:
            for landmarks in LANDMARKS:
                mse, penalty = nystroem_ridge(NYSTROEM_KERNELS[name], width / n_features, landmarks, features, y,
                                              n_train)
                print(f"| the same, {landmarks} training rows as landmarks (Nyström) | {mse:.5g} | "
                      f"{mse / mean_mse:.3f} | penalty {penalty:.3g} |", flush=True)
    network = mlp().fit(features[:n_train], y[:n_train])
    mse = float(np.mean((network.predict(features[n_train:]) - y[n_train:]) ** 2))
    print(f"| MLP (256 ReLUs) | {mse:.5g} | {mse / mean_mse:.3f} | "
          f"penalty {network.regressor_[-1].best_params_['alpha']:.3g} |", flush=True)


if __name__ == "__main__":
    main()
