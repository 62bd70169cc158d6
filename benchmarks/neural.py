"""Neural expert baselines reimplemented in torch: DeepDTA (binding affinity) and DeepSynergy (synergy).

Both follow their papers' architectures, trained with Adam on standardised targets, with early
stopping on a seeded share of the training rows (never the test rows).

- DeepDTA (Öztürk et al. 2018): label-encoded SMILES (85 characters) and protein (1,200 residues),
  128-d embeddings, three 1-D convolutions per branch (32, 64, 96 filters; kernels 4 for SMILES and 8
  for proteins), global max pooling, then dense layers 1024-1024-512 with dropout 0.1.
- DeepSynergy (Preuer et al. 2018): both drugs' features and the cell line's expression, normalised
  as standardise-tanh-standardise, a conical MLP with dropout 0.2 on inputs and 0.5 on hidden
  layers, trained on both drug orders and predicting their mean. Drugs are Morgan count
  fingerprints here (the paper also used chemical descriptors and toxicophores).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from torch import nn

from benchmarks.features import morgan_counts


def _standardised(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    mean, scale = float(np.mean(y)), float(np.std(y)) or 1.0
    return ((y - mean) / scale).astype(np.float32), mean, scale


def fit_network(network: nn.Module, inputs: list[torch.Tensor], targets: np.ndarray, *, epochs: int,
                batch_size: int, lr: float, validation_fraction: float, patience: int, seed: int,
                groups: np.ndarray | None = None) -> list[dict]:
    """Train ``network(*inputs)`` -> ``(n,)`` on ``targets`` ``(n,)`` with MSE; keep the best validation epoch.

    ``validation_fraction`` of the ``groups`` (default: of the rows) is held out for early stopping
    after ``patience`` epochs without improvement. Returns one dict per epoch with
    ``train_loss`` and ``valid_loss``.
    """
    rng = np.random.default_rng(seed)
    groups = np.arange(len(targets)) if groups is None else np.asarray(groups)
    names = rng.permutation(np.unique(groups))
    n_valid = int(round(len(names) * validation_fraction)) if len(names) >= 10 else 0
    is_valid = np.isin(groups, names[:n_valid])
    train, valid = np.flatnonzero(~is_valid), np.flatnonzero(is_valid)
    y = torch.as_tensor(targets)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    history, best, best_state, stale = [], math.inf, None, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            network.train()
            total = 0.0
            for batch in np.array_split(rng.permutation(train), max(1, math.ceil(len(train) / batch_size))):
                rows = torch.as_tensor(batch)
                loss = nn.functional.mse_loss(network(*(x[rows] for x in inputs)), y[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(rows)
            record = {"epoch": epoch, "train_loss": total / len(train)}
            if n_valid:
                record["valid_loss"] = nn.functional.mse_loss(predict_network(network, inputs, valid), y[valid]).item()
            history.append(record)
            monitored = record.get("valid_loss", record["train_loss"])
            if monitored < best:
                best, best_state, stale = monitored, copy.deepcopy(network.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    network.load_state_dict(best_state)
    network.eval()
    return history


@torch.no_grad()
def predict_network(network: nn.Module, inputs: list[torch.Tensor], rows: np.ndarray | None = None,
                    batch_size: int = 512) -> torch.Tensor:
    """``network`` outputs ``(len(rows),)`` in evaluation mode (all rows when ``rows`` is None)."""
    network.eval()
    rows = np.arange(len(inputs[0])) if rows is None else rows
    outputs = [network(*(x[torch.as_tensor(rows[s:s + batch_size])] for x in inputs))
               for s in range(0, len(rows), batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


def label_encode(texts, length: int) -> torch.Tensor:
    """Characters as their code points (< 128, 0 = padding), cut or padded to ``length``: ``(n, length)``."""
    codes = np.zeros((len(texts), length), dtype=np.int64)
    for i, text in enumerate(texts):
        row = np.frombuffer(text[:length].encode("ascii", "replace"), dtype=np.uint8)
        codes[i, :len(row)] = row
    return torch.as_tensor(codes)


class _ConvEncoder(nn.Sequential):
    """Embedding and three ReLU convolutions (``f``, ``2f``, ``3f`` filters), max-pooled: ``(B, L) -> (B, 3f)``."""

    def __init__(self, filters: int, kernel: int, embedding: int = 128, vocabulary: int = 128):
        super().__init__(
            nn.Embedding(vocabulary, embedding, padding_idx=0),
            _Transpose(),
            nn.Conv1d(embedding, filters, kernel), nn.ReLU(),
            nn.Conv1d(filters, 2 * filters, kernel), nn.ReLU(),
            nn.Conv1d(2 * filters, 3 * filters, kernel), nn.ReLU(),
            nn.AdaptiveMaxPool1d(1), nn.Flatten(),
        )


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class _DeepDTA(nn.Module):
    def __init__(self, filters: int, smiles_kernel: int, protein_kernel: int):
        super().__init__()
        self.drug = _ConvEncoder(filters, smiles_kernel)
        self.protein = _ConvEncoder(filters, protein_kernel)
        self.head = nn.Sequential(
            nn.Linear(6 * filters, 1024), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(1024, 1024), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 1),
        )

    def forward(self, smiles: torch.Tensor, protein: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.drug(smiles), self.protein(protein)], dim=1)).squeeze(-1)


class DeepDTARegressor(RegressorMixin, BaseEstimator):
    """DeepDTA's CNN-CNN on columns ``Drug`` (SMILES) and ``Target`` (protein sequence)."""

    def __init__(self, smiles_length: int = 85, protein_length: int = 1200, filters: int = 32,
                 smiles_kernel: int = 4, protein_kernel: int = 8, epochs: int = 100, batch_size: int = 256,
                 lr: float = 1e-3, validation_fraction: float = 0.1, patience: int = 10, random_state: int = 0):
        self.smiles_length = smiles_length
        self.protein_length = protein_length
        self.filters = filters
        self.smiles_kernel = smiles_kernel
        self.protein_kernel = protein_kernel
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state

    def _inputs(self, X: pd.DataFrame) -> list[torch.Tensor]:
        return [label_encode(X["Drug"].tolist(), self.smiles_length), label_encode(X["Target"].tolist(), self.protein_length)]

    def fit(self, X: pd.DataFrame, y) -> "DeepDTARegressor":
        targets, self.y_mean_, self.y_scale_ = _standardised(np.asarray(y, dtype=float))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            self.network_ = _DeepDTA(self.filters, self.smiles_kernel, self.protein_kernel)
        self.history_ = fit_network(self.network_, self._inputs(X), targets, epochs=self.epochs,
                                    batch_size=self.batch_size, lr=self.lr,
                                    validation_fraction=self.validation_fraction, patience=self.patience,
                                    seed=self.random_state)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return predict_network(self.network_, self._inputs(X)).numpy() * self.y_scale_ + self.y_mean_


class _TanhNorm:
    """DeepSynergy's input normalisation: drop constant features, standardise, tanh, standardise."""

    def fit(self, X: np.ndarray) -> "_TanhNorm":
        self.keep = X.std(axis=0) > 0
        X = X[:, self.keep]
        self.mean1, self.std1 = X.mean(axis=0), X.std(axis=0)
        squashed = np.tanh((X - self.mean1) / self.std1)
        self.mean2, self.std2 = squashed.mean(axis=0), squashed.std(axis=0) + 1e-8
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        squashed = np.tanh((X[:, self.keep] - self.mean1) / self.std1)
        return ((squashed - self.mean2) / self.std2).astype(np.float32)


def _conical_mlp(widths: list[int]) -> nn.Sequential:
    """DeepSynergy's network: input dropout 0.2, ReLU layers of ``widths`` with dropout 0.5, one output ``(B,)``."""
    layers: list[nn.Module] = [nn.Dropout(0.2)]
    for n_in, n_out in zip(widths, widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(0.5)]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 1), nn.Flatten(0))


class DeepSynergyRegressor(RegressorMixin, BaseEstimator):
    """DeepSynergy's MLP on columns ``Drug1``, ``Drug2`` (SMILES) and ``Cell_Line_ID`` (rows of ``expression``)."""

    def __init__(self, expression: pd.DataFrame | None = None, hidden: tuple[int, ...] = (2048, 1024),
                 epochs: int = 100, batch_size: int = 128, lr: float = 1e-4, validation_fraction: float = 0.1,
                 patience: int = 10, random_state: int = 0):
        self.expression = expression
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state

    def _features(self, X: pd.DataFrame, swap: bool = False) -> np.ndarray:
        first, second = ("Drug2", "Drug1") if swap else ("Drug1", "Drug2")
        cells = self.expression.loc[X["Cell_Line_ID"]].to_numpy(np.float32)
        return np.hstack([morgan_counts(X[first].tolist()), morgan_counts(X[second].tolist()), cells])

    def fit(self, X: pd.DataFrame, y) -> "DeepSynergyRegressor":
        features = np.vstack([self._features(X), self._features(X, swap=True)])
        self.norm_ = _TanhNorm().fit(features)
        targets, self.y_mean_, self.y_scale_ = _standardised(np.tile(np.asarray(y, dtype=float), 2))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            self.network_ = _conical_mlp([int(self.norm_.keep.sum()), *self.hidden])
        self.history_ = fit_network(self.network_, [torch.as_tensor(self.norm_.transform(features))], targets,
                                    epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                    validation_fraction=self.validation_fraction, patience=self.patience,
                                    seed=self.random_state, groups=np.tile(np.arange(len(X)), 2))
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        both = [predict_network(self.network_, [torch.as_tensor(self.norm_.transform(self._features(X, swap)))])
                for swap in (False, True)]
        return ((both[0] + both[1]) / 2).numpy() * self.y_scale_ + self.y_mean_
