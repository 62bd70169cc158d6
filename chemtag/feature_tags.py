"""Feature tags: ``p`` input vectors per entity (e.g. a cell line) projected from its numeric features.

A template's feature slot ``<{field}>`` splices in the vectors of the field's value. They train
(through the projection) and stand right before the function tag, in the part of the prompt that is
recomputed every step, so the frozen-prefix cache stays exact (see :mod:`chemtag.prefix_cache`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class FeatureTag(nn.Module):
    """``p`` vectors of width ``d`` for each of ``n`` entities, from its ``f`` numeric features.

    An entity's raw features ``(f,)`` are standardised with the mean and spread over the ``n``
    entities (buffers, fitted once by :meth:`initialise`), scaled by ``1/sqrt(f)`` and mapped by a
    trainable linear projection ``f -> p·d``. The projection starts with a zero weight and a bias of
    the given ``(p, d)`` vectors (Tag-LLM's tag initialisation): every entity starts with the same
    vectors, so training starts from a model that ignores the features and learns how they move the
    vectors. The ``1/sqrt(f)`` keeps an Adam step of size ``lr`` from moving a vector by ``lr * f``
    (as the ``1/sqrt(d)`` of :class:`~chemtag.heads.LinearHead`).

    Parameters
    ----------
    ids : the entities' names, in the order of the rows of ``features``.
    n_features, length, hidden_size : ``f``, ``p`` and ``d``.
    """

    def __init__(self, ids: Sequence[str], n_features: int, length: int, hidden_size: int):
        super().__init__()
        self.ids = list(ids)
        self.length = length
        self.register_buffer("features", torch.zeros(len(self.ids), n_features))
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        self.projection = nn.Linear(n_features, length * hidden_size)
        self.scale = 1 / math.sqrt(n_features)

    @classmethod
    def initialise(cls, ids: Sequence[str], features: torch.Tensor, vectors: torch.Tensor) -> "FeatureTag":
        """A feature tag for ``features`` ``(n, f)`` of ``ids`` that starts at ``vectors`` ``(p, d)`` for every entity.

        A feature that does not vary across the entities keeps a scale of 1 (it standardises to 0).
        """
        tag = cls(ids, features.shape[1], *vectors.shape)
        spread = features.float().std(dim=0, unbiased=False)
        with torch.no_grad():
            tag.features.copy_(features)
            tag.feature_mean.copy_(features.float().mean(dim=0))
            tag.feature_scale.copy_(torch.where(spread > 0, 1 / spread, torch.ones_like(spread)))
            tag.projection.weight.zero_()
            tag.projection.bias.copy_(vectors.reshape(-1))
        return tag

    @classmethod
    def from_state(cls, ids: Sequence[str], state: dict[str, torch.Tensor], hidden_size: int) -> "FeatureTag":
        """The feature tag of width ``hidden_size`` whose ``state_dict()`` is ``state``."""
        tag = cls(ids, state["features"].shape[1], state["projection.bias"].shape[0] // hidden_size, hidden_size)
        tag.load_state_dict(state)
        return tag

    def forward(self, entities: torch.Tensor) -> torch.Tensor:
        """The vectors of ``entities`` ``(k,)`` (row indices): ``(k, p, d)``, float32 even under autocast (as tags)."""
        standardised = (self.features[entities] - self.feature_mean) * self.feature_scale * self.scale
        with torch.autocast(device_type=standardised.device.type, enabled=False):
            return self.projection(standardised).unflatten(-1, (self.length, -1))

    def splice(self, embeds: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``embeds`` ``(B, L, d)`` with vector ``k`` of entity ``e`` wherever ``rows`` ``(B, L)`` is
        ``e * p + k`` (negative: left as is). Each entity of the batch is projected once."""
        at = rows >= 0
        entities, inverse = torch.unique(rows[at] // self.length, return_inverse=True)
        vectors = self(entities)[inverse, rows[at] % self.length]
        return embeds.index_put((at,), vectors.to(embeds.dtype))
