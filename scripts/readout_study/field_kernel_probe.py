"""Would the kernel head read more with a width of its own for each block of states?

The kernel head (``head="kernel"``) decays with the mean absolute difference over all its standardised
features, so each block (the function tag's readout, each domain field's means) weighs by its width in
features. On a pair task that ties the drugs' similarity to the proteins'. This study takes the states the
head reads for a benchmark task's seeded train/test subsample (the preset's template, shipped domain tags,
untrained function tag, bfloat16 through the prefix cache, as a fit with ``max_epochs=0`` computes them),
standardises them as the head does, and fits exact Laplacian kernel ridge with
``k(a, b) = exp(-sum_blocks weight_b * mean_b |a - b|)``:

1. one shared width, as the head has it (``weight_b = width * share of features``), over the head's widths;
2. from the best of those, each block's weight in turn scaled by :data:`SCALES` (0 drops the block), twice
   over the blocks, keeping a change where it lowers the validation error.

Every choice (weights and ridge penalty) is made on a seeded fifth of the training rows held out from the
fit; the chosen kernels are then fitted to all training rows and scored once on the test rows.

    PYTHONPATH=. .venv/bin/python scripts/readout_study/field_kernel_probe.py --task ba-davis \
        --n-train 8000 --n-test 1000 --pool-layers early --threads 2 --states /tmp/davis-8000.npz
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.metrics import concordance_index
from chemtag.kernel_head import KERNEL_PENALTIES, KERNEL_WIDTHS, mean_distances, standardised
from preset_states import mean_predictor_mse, probe_head, saved_head_inputs, study_parser

SCALES = (0.0, 1 / 3, 3.0)
"""Factors tried on one block's weight at a time."""
VALIDATION_FRACTION = 0.2


def block_distances(features: torch.Tensor, n_train: int, blocks: dict[str, slice]) -> dict[str, torch.Tensor]:
    """Each block's mean absolute difference from every row to every training row, ``(n, n_train)`` float64."""
    distances = {}
    for name, columns in blocks.items():
        started = time.perf_counter()
        part = features[:, columns]
        distances[name] = mean_distances(part, part[:n_train], "laplacian").double()
        print(f"distances of block {name} ({part.shape[1]:,} features): {time.perf_counter() - started:.0f} s",
              flush=True)
    return distances


def kernel(distances: dict[str, torch.Tensor], weights: dict[str, float], rows: torch.Tensor,
           columns: torch.Tensor) -> torch.Tensor:
    """``exp(-sum_b weights[b] * distances[b])`` between ``rows`` and ``columns`` (indices ``(r,)``, ``(c,)``)."""
    exponent = torch.zeros(len(rows), len(columns), dtype=torch.float64)
    for name, weight in weights.items():
        if weight:
            exponent += weight * distances[name][rows][:, columns]
    return torch.exp(-exponent)


def ridge_predictions(distances: dict[str, torch.Tensor], weights: dict[str, float], y: torch.Tensor,
                      fitted: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Predictions ``(len(penalties), len(scored))`` of kernel ridge fitted to the rows ``fitted``, one per
    penalty of :data:`~chemtag.kernel_head.KERNEL_PENALTIES` (one eigendecomposition serves them all)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(kernel(distances, weights, fitted, fitted))
    offset = y[fitted].mean()
    projected = eigenvectors.T @ (y[fitted] - offset)
    across = kernel(distances, weights, scored, fitted) @ eigenvectors
    penalties = torch.tensor(KERNEL_PENALTIES, dtype=y.dtype)
    return (projected / (eigenvalues.clamp(min=0)[None, :] + penalties[:, None])) @ across.T + offset


def shown(weights: dict[str, float]) -> str:
    return ", ".join(f"{name} {weight:.3g}" for name, weight in weights.items())


def main() -> None:
    parser = study_parser(__doc__.split("\n\n")[0], max_residues=0)
    parser.add_argument("--states", type=Path, help="keep the computed states in this .npz and read them back")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inputs = saved_head_inputs(args, args.states, batch_size=16, bf16=True)
    features, y, n_train, d = inputs.features, inputs.y, inputs.n_train, inputs.hidden_size
    blocks = {"readout": slice(0, d)} | {f"field {k + 1}": columns for k, columns in enumerate(inputs.field_columns())}
    print(f"{args.task}, {n_train:,} train / {len(y) - n_train:,} test, seed {args.seed}; mean predictor MSE "
          f"{mean_predictor_mse(y, n_train):.4f}; blocks: " + ", ".join(
              f"{name} {s.stop - s.start:,} features" for name, s in blocks.items()), flush=True)

    with torch.no_grad():  # standardised as the kernel head standardises them
        standardised_features = standardised(probe_head(features, y, n_train, d), torch.from_numpy(features))
    distances = block_distances(standardised_features, n_train, blocks)
    targets = torch.from_numpy(y).double()
    order = torch.from_numpy(np.random.default_rng(args.seed).permutation(n_train))
    held_out = int(VALIDATION_FRACTION * n_train)
    validation, fitted = order[:held_out], order[held_out:]

    tried: dict[tuple[float, ...], tuple[float, float]] = {}

    def validated(weights: dict[str, float]) -> tuple[float, float]:
        """Least validation MSE over the penalties, and that penalty (each kernel fitted once)."""
        key = tuple(weights.values())
        if key not in tried:
            errors = (ridge_predictions(distances, weights, targets, fitted, validation)
                      - targets[validation]).square().mean(dim=1)
            best = int(errors.argmin())
            tried[key] = errors[best].item(), KERNEL_PENALTIES[best]
            print(f"| {shown(weights)} | {tried[key][0]:.4f} | {tried[key][1]:g} |", flush=True)
        return tried[key]

    share = {name: (s.stop - s.start) / features.shape[1] for name, s in blocks.items()}
    print("\n| weights | validation MSE | penalty |\n|---|---|---|")
    shared = min(({name: width * share[name] for name in blocks} for width in KERNEL_WIDTHS["laplacian"]),
                 key=lambda weights: validated(weights)[0])
    best, best_error = dict(shared), validated(shared)[0]
    for _ in range(2):
        for name in blocks:
            for scale in SCALES:
                trial = best | {name: best[name] * scale}
                error = validated(trial)[0]
                if error < best_error:
                    best, best_error = trial, error

    train, test = torch.arange(n_train), torch.arange(n_train, len(y))
    print("\n| kernel | weights | test MSE | CI |\n|---|---|---|---|")
    for label, weights in (("one shared width", shared), ("a weight per block", best)):
        penalty = validated(weights)[1]
        predicted = ridge_predictions(distances, weights, targets, train, test)[KERNEL_PENALTIES.index(penalty)]
        mse = float((predicted - targets[test]).square().mean())
        print(f"| {label} | {shown(weights)}; penalty {penalty:g} | {mse:.4f} | "
              f"{concordance_index(y[n_train:], predicted.numpy()):.3f} |", flush=True)


if __name__ == "__main__":
    main()
