"""Task heads on the readout hidden state."""

from __future__ import annotations

import math

import torch
from torch import nn


class LinearHead(nn.Module):
    """``k`` outputs from a ``(B, d)`` hidden state: normalise, then a zero-initialised linear map scaled by
    ``1/sqrt(d)``.

    Normalising makes the head indifferent to the backbone's hidden-state scale, and the ``1/sqrt(d)``
    readout keeps an Adam step of size ``lr`` from moving the output by ``lr * d`` (the hidden state
    has ``d`` coordinates of order one), so one learning rate suits tags and head for any width.
    Zero initialisation starts regression at the (standardised) mean and classification at uniform.
    """

    def __init__(self, hidden_size: int, outputs: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, outputs)
        self.scale = 1 / math.sqrt(hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(hidden) * self.scale)
