"""Training losses of the heads' outputs, by name; each maps ``(outputs, targets)`` to a scalar mean.

Regression outputs are ``(n, 1)`` against standardised targets ``(n,)`` (units of the training
targets' standard deviation); classification outputs are logits ``(n, k)`` against class indices ``(n,)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> scalar mean
HUBER_DELTA = 1.0  # standard deviations of the training targets where the Huber loss turns linear


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return functional.mse_loss(outputs.squeeze(-1), targets)


def huber(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error within :data:`HUBER_DELTA` of the target, linear beyond: outliers pull less."""
    return functional.huber_loss(outputs.squeeze(-1), targets, delta=HUBER_DELTA)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return functional.cross_entropy(outputs, targets)


REGRESSION_LOSSES = {"squared_error": squared_error, "huber": huber}
