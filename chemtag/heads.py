"""Task heads on the readout hidden state."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from chemtag.losses import LossFunction

PENALTIES = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
"""L2 penalties of the linear probe, strongest first, among which cross-validation chooses."""
DEFAULT_PENALTY = 1e-2
"""L2 penalty of the linear probe when there are too few rows to cross-validate."""
PROBE_FOLDS = 5
"""Folds of the cross-validation that chooses the probe's penalty."""


def group_index(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Each of ``n`` rows' group as ``0 .. n_groups - 1`` ``(n,)``: ``groups``' distinct values in sorted
    order, or every row its own group without ``groups``."""
    return np.arange(n) if groups is None else np.unique(groups, return_inverse=True)[1]


class LinearHead(nn.Module):
    """``k`` outputs from ``blocks`` hidden states side by side, ``(B, blocks * d)``: layer-normalise each
    ``d``-wide block, standardise each feature, then a linear map scaled by ``1/sqrt(blocks * d)``.

    A causal LM's hidden state is a large constant offset with small input-dependent variation (on
    SmolLM2 the per-feature spread across inputs is about a tenth of the offset), so the per-feature
    standardisation, fitted once on the training readouts by :meth:`initialise`, is what lets a
    gradient step see the signal. The ``1/sqrt(d)`` readout keeps an Adam step of size ``lr`` from
    moving the output by ``lr * d``, so one learning rate suits tags and head at any width. Before
    :meth:`initialise` the standardisation is the identity and the linear map is zero, so regression
    starts at the (standardised) mean and classification at uniform. With ``blocks`` > 1 the head reads
    the readout followed by the pooled states of the prompt's domain fields
    (:attr:`~chemtag.model.TaggedModel.pooled_fields`).
    """

    def __init__(self, hidden_size: int, outputs: int, blocks: int = 1):
        super().__init__()
        self.hidden_size, self.blocks = hidden_size, blocks
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.register_buffer("feature_mean", torch.zeros(blocks * hidden_size))
        self.register_buffer("feature_scale", torch.ones(blocks * hidden_size))
        self.linear = nn.Linear(blocks * hidden_size, outputs)
        self.scale = 1 / math.sqrt(blocks * hidden_size)
        self._reset_linear()

    def normalised(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` ``(B, blocks * d)`` with each ``d``-wide block layer-normalised on its own."""
        return self.norm(hidden.unflatten(-1, (self.blocks, self.hidden_size))).flatten(-2)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """The linear map's input, ``(B, blocks * d)``: normalised, standardised and scaled ``hidden``."""
        return (self.normalised(hidden) - self.feature_mean) * self.feature_scale * self.scale

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(hidden))

    @torch.no_grad()
    def initialise(self, readouts: torch.Tensor, targets: torch.Tensor, loss_fn: LossFunction,
                   groups: np.ndarray | None = None) -> float:
        """Fit the head to fixed readouts: a linear probe that training then starts from.

        ``readouts`` ``(n, blocks * d)`` are the hidden states of the training rows before any tag update and
        ``targets`` ``(n, ...)`` their targets. The standardisation is fitted to the readouts
        (:meth:`fit_standardisation`); the linear map minimises ``loss_fn`` plus an L2 penalty on its
        weight by L-BFGS, the penalty chosen from :data:`PENALTIES` by :data:`PROBE_FOLDS`-fold
        cross-validation over the rows (interleaved folds; ``groups`` ``(n,)`` keeps copies of one input
        in one fold), or :data:`DEFAULT_PENALTY` with fewer than two rows a fold or fewer groups than
        folds. Returns the penalty.
        """
        self.fit_standardisation(readouts)
        features = self.features(readouts.float())
        group_of_row = group_index(groups, len(features))
        enough = len(features) >= 2 * PROBE_FOLDS and group_of_row.max() + 1 >= PROBE_FOLDS
        penalty = (self._cross_validated_penalty(features, targets, loss_fn, group_of_row) if enough
                   else DEFAULT_PENALTY)
        self._reset_linear()
        self._fit_linear(features, targets, loss_fn, penalty)
        return penalty

    @torch.no_grad()
    def fit_standardisation(self, readouts: torch.Tensor) -> None:
        """Take the standardisation from ``readouts`` ``(n, blocks * d)``: each normalised feature's mean and
        spread (a feature that hardly varies is not blown up to the others' spread)."""
        normalised = self.normalised(readouts.float())
        self.feature_mean.copy_(normalised.mean(dim=0))
        variance = normalised.var(dim=0, unbiased=False)
        self.feature_scale.copy_(torch.rsqrt(variance + 1e-4 * variance.mean() + 1e-12))

    def _cross_validated_penalty(self, features: torch.Tensor, targets: torch.Tensor, loss_fn: LossFunction,
                                 group_of_row: np.ndarray) -> float:
        """The penalty of least summed held-out loss over the folds (group ``g`` in fold ``g % PROBE_FOLDS``);
        each fold's fits run strongest first, each starting from the previous one's solution."""
        fold = torch.from_numpy(group_of_row % PROBE_FOLDS).to(features.device)
        held_out_loss = [0.0] * len(PENALTIES)
        for k in range(PROBE_FOLDS):
            fitted, held = fold != k, fold == k
            self._reset_linear()
            for i, penalty in enumerate(PENALTIES):
                self._fit_linear(features[fitted], targets[fitted], loss_fn, penalty)
                held_out_loss[i] += loss_fn(self.linear(features[held]), targets[held]).item() * int(held.sum())
        return PENALTIES[min(range(len(PENALTIES)), key=held_out_loss.__getitem__)]

    def _reset_linear(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def _fit_linear(self, features: torch.Tensor, targets: torch.Tensor, loss_fn: LossFunction,
                    penalty: float) -> None:
        """Minimise ``loss_fn(linear(features), targets) + penalty * |W|^2`` over the linear map, in place."""
        optimizer = torch.optim.LBFGS(self.linear.parameters(), max_iter=200, tolerance_change=1e-10,
                                      line_search_fn="strong_wolfe")

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            loss = loss_fn(self.linear(features), targets) + penalty * self.linear.weight.square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(objective)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Heads saved before the standardisation existed hold no statistics: theirs is the identity.
        state_dict.setdefault(prefix + "feature_mean", torch.zeros_like(self.feature_mean))
        state_dict.setdefault(prefix + "feature_scale", torch.ones_like(self.feature_scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
