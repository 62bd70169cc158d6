"""A kernel ridge head: reads more from the frozen states than the linear head, at the price of keeping
every training row's state (see docs/training.md, "Would a nonlinear head read more?").

The kernel is Laplacian on the linear head's standardised features: ``k(a, b) = exp(-width * mean |a - b|)``,
the mean over the features. Its width and ridge penalty are chosen by cross-validation over the training
rows; the fit is exact, so it costs ``n²`` memory and ``n³`` time in the number of training rows ``n``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from chemtag.heads import PROBE_FOLDS, LinearHead, group_index

KERNEL_WIDTHS = (0.3, 1.0, 3.0, 10.0)
"""Kernel widths among which cross-validation chooses, in units of ``1 / mean |a - b|`` (standardised features)."""
KERNEL_PENALTIES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Ridge penalties among which cross-validation chooses (the kernel's diagonal is 1)."""
DEFAULT_WIDTH, DEFAULT_PENALTY = 1.0, 1e-2
"""Width and penalty where there are too few rows to cross-validate (as the linear probe's default penalty)."""
KERNEL_STATE_PREFIX = "kernel."
"""Prefix of the kernel head's tensors in an estimator's ``head_``, beside the linear head's own."""
KERNEL_BYTES_PER_ENTRY = 32
"""Memory an exact fit holds per entry of the ``n x n`` kernel: float64 distances, kernel, a fold's sub-kernel
and its eigenvectors."""
_CHUNK_ROWS = 1024
"""Rows of ``a`` per block of the kernel matrix (bounds the memory of the distance computation)."""


def mean_absolute_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean |a_i - b_j|`` over the features ``(n_a, n_b)`` for ``a`` ``(n_a, f)`` and ``b`` ``(n_b, f)``."""
    return torch.cat([torch.cdist(chunk, b, p=1) for chunk in a.split(_CHUNK_ROWS)]) / a.shape[1]


def laplacian_kernel(a: torch.Tensor, b: torch.Tensor, width: float) -> torch.Tensor:
    """``exp(-width * mean |a_i - b_j|)`` ``(n_a, n_b)`` for features ``a`` ``(n_a, f)`` and ``b`` ``(n_b, f)``."""
    return torch.exp(-width * mean_absolute_distances(a, b))


class KernelHead(nn.Module):
    """Kernel ridge over the training rows' standardised features, on top of a fitted :class:`LinearHead`.

    ``base`` supplies the standardisation of the readouts (fitted on the training readouts) and is kept
    so that a warm start can train on from it. ``train_features`` ``(n, f)`` are the training rows'
    standardised features, ``coef`` ``(n, k)`` the ridge solution and ``offset`` ``(k,)`` the training
    targets' mean: the outputs of readouts ``(B, f)`` are ``kernel(features, train_features) @ coef + offset``.
    """

    def __init__(self, base: LinearHead, train_features: torch.Tensor, coef: torch.Tensor, offset: torch.Tensor,
                 width: float, penalty: float):
        super().__init__()
        self.base = base
        self.register_buffer("train_features", train_features)
        self.register_buffer("coef", coef)
        self.register_buffer("offset", offset)
        self.register_buffer("width", torch.tensor(float(width), dtype=torch.float64))
        self.register_buffer("penalty", torch.tensor(float(penalty), dtype=torch.float64))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        features = standardised(self.base, hidden).to(self.train_features.dtype)
        return laplacian_kernel(features, self.train_features, self.width.item()) @ self.coef + self.offset

    @classmethod
    def fit(cls, base: LinearHead, readouts: torch.Tensor, targets: torch.Tensor,
            groups: np.ndarray | None = None) -> tuple["KernelHead", float]:
        """Fit to the training rows' ``readouts`` ``(n, f)`` and regression ``targets`` ``(n,)`` or ``(n, k)``
        by squared error; the width and penalty of least cross-validated squared error over
        :data:`KERNEL_WIDTHS` and :data:`KERNEL_PENALTIES` (:data:`~chemtag.heads.PROBE_FOLDS` folds,
        ``groups`` ``(n,)`` keeping copies of one input in one fold), or :data:`DEFAULT_WIDTH` and
        :data:`DEFAULT_PENALTY` with fewer than two rows a fold or fewer groups than folds. Returns the head
        and that error (mean over rows and outputs, in the targets' units squared; NaN without
        cross-validation)."""
        with torch.no_grad():
            features = standardised(base, readouts).double()
        y = targets.reshape(len(targets), -1).to(features)
        distances = mean_absolute_distances(features, features)  # shared by every width and the final fit
        group_of_row = group_index(groups, len(y))
        if len(y) >= 2 * PROBE_FOLDS and group_of_row.max() + 1 >= PROBE_FOLDS:
            fold = torch.from_numpy(group_of_row % PROBE_FOLDS).to(features.device)
            error, width, penalty = min(_cross_validated_errors(distances, y, fold))
        else:
            error, width, penalty = float("nan"), DEFAULT_WIDTH, DEFAULT_PENALTY
        coef = _ridge(torch.exp(-width * distances), y - y.mean(dim=0), penalty)
        head = cls(base, features.float(), coef.float(), y.mean(dim=0).float(), width, penalty)
        return head, error

    def kernel_state(self) -> dict[str, torch.Tensor]:
        """The kernel's tensors, named with :data:`KERNEL_STATE_PREFIX` (the base head's are its own)."""
        names = ("train_features", "coef", "offset", "width", "penalty")
        return {KERNEL_STATE_PREFIX + name: getattr(self, name) for name in names}

    @classmethod
    def from_state(cls, base: LinearHead, state: dict[str, torch.Tensor]) -> "KernelHead":
        """The head of :meth:`kernel_state` ``state`` on ``base``."""
        kernel = {name.removeprefix(KERNEL_STATE_PREFIX): value for name, value in state.items()}
        return cls(base, kernel["train_features"], kernel["coef"], kernel["offset"], kernel["width"].item(),
                   kernel["penalty"].item())


def check_kernel_memory(n_rows: int, device: torch.device) -> None:
    """Refuse, before any compute, a fit over ``n_rows`` training rows whose kernels would not fit the free
    memory of ``device`` (not checked where that is unknown)."""
    needed, free = KERNEL_BYTES_PER_ENTRY * n_rows**2, free_memory_bytes(device)
    if free is not None and needed > free:
        raise ValueError(f"head='kernel' fits exactly over all {n_rows:,} training rows and needs about "
                         f"{needed / 2**30:.1f} GiB for it (n² float64 kernels), more than the {free / 2**30:.1f} "
                         f"GiB free on {device}. Use head='linear', or fewer training rows.")


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device, or the memory Linux reports available; None where neither is known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
    except OSError:
        return None
    available = fields.get("MemAvailable", "").split()
    return int(available[0]) * 1024 if available else None


def standardised(base: LinearHead, hidden: torch.Tensor) -> torch.Tensor:
    """``base``'s standardised features ``(B, f)`` of readouts ``hidden``, without its ``1/sqrt(f)`` scale."""
    return base.features(hidden.float()) / base.scale


def _ridge(kernel: torch.Tensor, y: torch.Tensor, penalty: float) -> torch.Tensor:
    """``(kernel + penalty * I)^-1 y`` for a kernel ``(n, n)`` and targets ``(n, k)``."""
    regularised = kernel + penalty * torch.eye(len(kernel), dtype=kernel.dtype, device=kernel.device)
    return torch.cholesky_solve(y, torch.linalg.cholesky(regularised))


def _cross_validated_errors(distances: torch.Tensor, y: torch.Tensor, fold: torch.Tensor):
    """``(error, width, penalty)`` for every pair of the grids, from the rows' :func:`mean_absolute_distances`
    ``(n, n)``: the mean squared error over the held-out rows of each fold. One eigendecomposition per
    width and fold solves every penalty."""
    errors = torch.zeros(len(KERNEL_WIDTHS), len(KERNEL_PENALTIES), dtype=distances.dtype, device=distances.device)
    penalties = torch.tensor(KERNEL_PENALTIES, dtype=distances.dtype, device=distances.device)
    for w, width in enumerate(KERNEL_WIDTHS):
        kernel = torch.exp(-width * distances)
        for k in range(PROBE_FOLDS):
            fitted, held = fold != k, fold == k
            eigenvalues, eigenvectors = torch.linalg.eigh(kernel[fitted][:, fitted])
            offset = y[fitted].mean(dim=0)
            projected = eigenvectors.T @ (y[fitted] - offset)  # (n_fitted, k)
            across = kernel[held][:, fitted] @ eigenvectors  # (n_held, n_fitted)
            for p, penalty in enumerate(penalties):
                predicted = across @ (projected / (eigenvalues.clamp(min=0) + penalty)[:, None]) + offset
                errors[w, p] += (predicted - y[held]).square().sum()
    errors /= y.numel()
    for w, width in enumerate(KERNEL_WIDTHS):
        for p, penalty in enumerate(KERNEL_PENALTIES):
            yield errors[w, p].item(), width, penalty
