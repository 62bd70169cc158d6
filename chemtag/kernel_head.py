"""A kernel ridge head: reads more from the frozen states than the linear head, at the price of keeping
the training rows' states, up to a number of landmarks of them (see docs/training.md, "Would a nonlinear
head read more?").

The kernel acts on the linear head's standardised features: Laplacian, ``k(a, b) = exp(-width * mean |a - b|)``,
or Gaussian, ``k(a, b) = exp(-width * mean (a - b)²)``, the mean over the features. The kernel, its width and
the ridge penalty are chosen by cross-validation over the training rows. Up to ``m`` training rows
(:data:`DEFAULT_LANDMARKS` unless chosen) the fit is exact, costing ``n²`` memory and ``n³`` time in the
number of training rows ``n``; beyond, it is Nyström's approximation (the subset of regressors): the
predictor is a kernel expansion over ``m`` landmark rows drawn at random, fitted to all ``n`` rows,
costing ``n·m`` memory and ``n·m²`` time.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from chemtag.heads import PROBE_FOLDS, LinearHead, group_index

KERNEL_WIDTHS = {"laplacian": (0.3, 1.0, 3.0, 10.0), "gaussian": (0.03, 0.1, 0.3, 1.0)}
"""Widths among which cross-validation chooses, per kernel: in units of ``1 / mean |a - b|`` (Laplacian) or
``1 / mean (a - b)²`` (Gaussian) over standardised features."""
KERNELS = tuple(KERNEL_WIDTHS)
KERNEL_PENALTIES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Ridge penalties among which cross-validation chooses (the kernel's diagonal is 1)."""
DEFAULT_KERNEL, DEFAULT_WIDTH, DEFAULT_PENALTY = "laplacian", 1.0, 1e-2
"""Kernel, width and penalty where there are too few rows to cross-validate (as the linear probe's default
penalty); also the kernel of heads saved before the Gaussian kernel was a choice."""
KERNEL_STATE_PREFIX = "kernel."
"""Prefix of the kernel head's tensors in an estimator's ``head_``, beside the linear head's own."""
DEFAULT_LANDMARKS = 4096
"""Training rows up to which a fit is exact by default; a larger fit is Nyström's over this many landmark rows."""
KERNEL_BYTES_PER_ENTRY = 40
"""Memory a fit holds per entry of its ``n x m`` kernel (``m = n`` exact): float64 distances of the best kernel
so far and of the one being cross-validated, kernel, and a fold's sub-kernel and its eigenvectors (exact) or
the Nyström features and their solutions (approximate)."""
_CHUNK_ROWS = 1024
"""Rows of ``a`` per block of the kernel matrix (bounds the memory of the distance computation)."""


def mean_distances(a: torch.Tensor, b: torch.Tensor, kernel: str) -> torch.Tensor:
    """The distances ``kernel`` decays with, ``(n_a, n_b)`` for ``a`` ``(n_a, f)`` and ``b`` ``(n_b, f)``:
    ``mean |a_i - b_j|`` (``"laplacian"``) or ``mean (a_i - b_j)²`` (``"gaussian"``) over the features."""
    power = {"laplacian": 1, "gaussian": 2}[kernel]
    return torch.cat([torch.cdist(chunk, b, p=power) ** power for chunk in a.split(_CHUNK_ROWS)]) / a.shape[1]


def kernel_matrix(a: torch.Tensor, b: torch.Tensor, kernel: str, width: float) -> torch.Tensor:
    """``exp(-width * distance)`` ``(n_a, n_b)`` for features ``a`` ``(n_a, f)`` and ``b`` ``(n_b, f)``, the
    distance of ``kernel`` (:func:`mean_distances`)."""
    return torch.exp(-width * mean_distances(a, b, kernel))


class KernelHead(nn.Module):
    """Kernel ridge over the training rows' standardised features, on top of a fitted :class:`LinearHead`.

    ``base`` supplies the standardisation of the readouts (fitted on the training readouts) and is kept
    so that a warm start can train on from it. ``train_features`` ``(m, f)`` are the standardised features
    of the rows the kernel expands over (all ``n`` training rows, or ``m`` landmarks of them), ``coef``
    ``(m, k)`` the ridge solution and ``offset`` ``(k,)`` the training targets' mean: the outputs of readouts
    ``(B, f)`` are ``kernel(features, train_features) @ coef + offset``, with ``kernel`` one of :data:`KERNELS`.
    """

    def __init__(self, base: LinearHead, train_features: torch.Tensor, coef: torch.Tensor, offset: torch.Tensor,
                 kernel: str, width: float, penalty: float):
        super().__init__()
        self.base = base
        self.kernel = kernel
        self.register_buffer("train_features", train_features)
        self.register_buffer("coef", coef)
        self.register_buffer("offset", offset)
        self.register_buffer("width", torch.tensor(float(width), dtype=torch.float64))
        self.register_buffer("penalty", torch.tensor(float(penalty), dtype=torch.float64))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        features = standardised(self.base, hidden).to(self.train_features.dtype)
        return kernel_matrix(features, self.train_features, self.kernel, self.width.item()) @ self.coef + self.offset

    @classmethod
    def fit(cls, base: LinearHead, readouts: torch.Tensor, targets: torch.Tensor,
            groups: np.ndarray | None = None, landmarks: int = DEFAULT_LANDMARKS,
            seed: int | None = None) -> tuple["KernelHead", float]:
        """Fit to the training rows' ``readouts`` ``(n, f)`` and regression ``targets`` ``(n,)`` or ``(n, k)``
        by squared error; the kernel, width and penalty of least cross-validated squared error over
        :data:`KERNELS`, their :data:`KERNEL_WIDTHS` and :data:`KERNEL_PENALTIES`
        (:data:`~chemtag.heads.PROBE_FOLDS` folds, ``groups`` ``(n,)`` keeping copies of one input in one
        fold), or :data:`DEFAULT_KERNEL`, :data:`DEFAULT_WIDTH` and :data:`DEFAULT_PENALTY` with fewer than
        two rows a fold or fewer groups than folds. Beyond ``landmarks`` rows, the fit is Nyström's over that
        many rows drawn with ``seed``. Returns the head and that error (mean over rows and outputs, in the targets'
        units squared; NaN without cross-validation)."""
        with torch.no_grad():
            features = standardised(base, readouts).double()
        y = targets.reshape(len(targets), -1).to(features)
        landmarks = _landmarks(len(y), landmarks, seed, features.device)
        group_of_row = group_index(groups, len(y))
        if len(y) >= 2 * PROBE_FOLDS and group_of_row.max() + 1 >= PROBE_FOLDS:
            fold = torch.from_numpy(group_of_row % PROBE_FOLDS).to(features.device)
            (error, kernel, width, penalty), distances = _cross_validated_choice(features, y, fold, landmarks)
        else:
            error, kernel, width, penalty = float("nan"), DEFAULT_KERNEL, DEFAULT_WIDTH, DEFAULT_PENALTY
            distances = mean_distances(features, features[landmarks], kernel)
        kernel_rows = torch.exp(-width * distances)
        centred = y - y.mean(dim=0)
        coef = (_ridge(kernel_rows, centred, penalty) if len(landmarks) == len(y)
                else _nystrom_ridge(kernel_rows, landmarks, centred, penalty))
        head = cls(base, features[landmarks].float(), coef.float(), y.mean(dim=0).float(), kernel, width, penalty)
        return head, error

    def kernel_state(self) -> dict[str, torch.Tensor]:
        """The kernel's tensors, named with :data:`KERNEL_STATE_PREFIX` (the base head's are its own); the
        kernel is its index in :data:`KERNELS`."""
        names = ("train_features", "coef", "offset", "width", "penalty")
        state = {KERNEL_STATE_PREFIX + name: getattr(self, name) for name in names}
        return state | {KERNEL_STATE_PREFIX + "kernel_index": torch.tensor(KERNELS.index(self.kernel))}

    @classmethod
    def from_state(cls, base: LinearHead, state: dict[str, torch.Tensor]) -> "KernelHead":
        """The head of :meth:`kernel_state` ``state`` on ``base`` (:data:`DEFAULT_KERNEL` where ``state``
        names none)."""
        kernel = {name.removeprefix(KERNEL_STATE_PREFIX): value for name, value in state.items()}
        kind = KERNELS[int(kernel["kernel_index"])] if "kernel_index" in kernel else DEFAULT_KERNEL
        return cls(base, kernel["train_features"], kernel["coef"], kernel["offset"], kind, kernel["width"].item(),
                   kernel["penalty"].item())


def check_kernel_memory(n_rows: int, landmarks: int, device: torch.device) -> None:
    """Refuse, before any compute, a fit over ``n_rows`` training rows and at most ``landmarks`` landmarks
    whose kernels would not fit the free memory of ``device`` (not checked where that is unknown)."""
    n_landmarks = min(n_rows, landmarks)
    needed, free = KERNEL_BYTES_PER_ENTRY * n_rows * n_landmarks, free_memory_bytes(device)
    if free is not None and needed > free:
        fit = ("exactly" if n_landmarks == n_rows else f"with {n_landmarks:,} landmark rows")
        raise ValueError(f"head='kernel' fits {fit} over all {n_rows:,} training rows and needs about "
                         f"{needed / 2**30:.1f} GiB for it (float64 kernels), more than the {free / 2**30:.1f} "
                         f"GiB free on {device}. Use head='linear', fewer kernel_landmarks, or fewer training rows.")


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
    """``(kernel + penalty * I)^-1 y`` for a kernel or Gram matrix ``(n, n)`` and targets ``(n, k)``."""
    regularised = kernel + penalty * torch.eye(len(kernel), dtype=kernel.dtype, device=kernel.device)
    return torch.cholesky_solve(y, torch.linalg.cholesky(regularised))


def _landmarks(n_rows: int, count: int, seed: int | None, device: torch.device) -> torch.Tensor:
    """The rows ``(m,)`` the kernel expands over: all ``n_rows`` up to ``count``, else ``count`` of them drawn
    without replacement with ``seed`` (in increasing order)."""
    if n_rows <= count:
        return torch.arange(n_rows, device=device)
    drawn = np.random.default_rng(seed).choice(n_rows, count, replace=False)
    return torch.from_numpy(np.sort(drawn)).to(device)


def _nystrom_basis(landmark_kernel: torch.Tensor) -> torch.Tensor:
    """``(m, r)`` map from kernel values against ``m`` landmarks to Nyström features, ``U S^-1/2`` for the
    landmarks' kernel ``(m, m)`` ``= U S Uᵀ``, over its ``r`` eigenvalues above 1e-12 of the largest: the
    features' inner products reproduce the kernel as seen through the landmarks."""
    eigenvalues, eigenvectors = torch.linalg.eigh(landmark_kernel)
    kept = eigenvalues > 1e-12 * eigenvalues[-1]
    return eigenvectors[:, kept] / eigenvalues[kept].sqrt()


def _nystrom_ridge(kernel_rows: torch.Tensor, landmarks: torch.Tensor, y: torch.Tensor,
                   penalty: float) -> torch.Tensor:
    """Coefficients ``(m, k)`` over the landmarks of the ridge fit to targets ``y`` ``(n, k)`` of all rows,
    from every row's kernel against the landmarks ``(n, m)``: minimises ``|y - K a|² + penalty aᵀ K_mm a``
    (exact kernel ridge where the landmarks are all rows)."""
    basis = _nystrom_basis(kernel_rows[landmarks])
    features = kernel_rows @ basis
    return basis @ _ridge(features.T @ features, features.T @ y, penalty)


def _cross_validated_choice(features: torch.Tensor, y: torch.Tensor, fold: torch.Tensor, landmarks: torch.Tensor):
    """``(error, kernel, width, penalty)`` of least cross-validated error over :data:`KERNELS` and their grids,
    and that kernel's :func:`mean_distances` ``(n, m)`` from the rows ``features`` ``(n, f)`` to the rows
    ``landmarks`` ``(m,)`` of them for the final fit (each kernel's distances serve all its widths; at most
    two are held at once)."""
    exact = len(landmarks) == len(y)
    best, best_distances = None, None
    for kernel in KERNELS:
        distances = mean_distances(features, features[landmarks], kernel)
        widths = KERNEL_WIDTHS[kernel]
        errors = (_cross_validated_errors(distances, y, fold, widths) if exact
                  else _nystrom_cross_validated_errors(distances, landmarks, y, fold, widths))
        error, width, penalty = min(errors)
        if best is None or error < best[0]:
            best, best_distances = (error, kernel, width, penalty), distances
        del distances
    return best, best_distances


def _nystrom_cross_validated_errors(distances: torch.Tensor, landmarks: torch.Tensor, y: torch.Tensor,
                                    fold: torch.Tensor, widths: tuple[float, ...]):
    """As :func:`_cross_validated_errors` for Nyström's fit, from the rows' distances to the landmarks
    ``(n, m)``: each fold's ridge is fitted to the other folds' rows over all landmarks (chosen without
    the targets). One Gram matrix of Nyström features per width serves every fold."""
    errors = torch.zeros(len(widths), len(KERNEL_PENALTIES), dtype=distances.dtype, device=distances.device)
    for w, width in enumerate(widths):
        kernel_rows = torch.exp(-width * distances)
        features = kernel_rows @ _nystrom_basis(kernel_rows[landmarks])  # (n, r)
        del kernel_rows
        gram = features.T @ features
        for k in range(PROBE_FOLDS):
            fitted, held = fold != k, fold == k
            offset = y[fitted].mean(dim=0)
            fold_gram = gram - features[held].T @ features[held]
            projected = features[fitted].T @ (y[fitted] - offset)
            for p, penalty in enumerate(KERNEL_PENALTIES):
                predicted = features[held] @ _ridge(fold_gram, projected, penalty) + offset
                errors[w, p] += (predicted - y[held]).square().sum()
    return _scored(errors / y.numel(), widths)


def _cross_validated_errors(distances: torch.Tensor, y: torch.Tensor, fold: torch.Tensor,
                            widths: tuple[float, ...]):
    """``(error, width, penalty)`` for every width of ``widths`` and penalty of :data:`KERNEL_PENALTIES`, from
    the rows' :func:`mean_distances` ``(n, n)``: the mean squared error over the held-out rows of each fold.
    One eigendecomposition per width and fold solves every penalty."""
    errors = torch.zeros(len(widths), len(KERNEL_PENALTIES), dtype=distances.dtype, device=distances.device)
    penalties = torch.tensor(KERNEL_PENALTIES, dtype=distances.dtype, device=distances.device)
    for w, width in enumerate(widths):
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
    return _scored(errors / y.numel(), widths)


def _scored(errors: torch.Tensor, widths: tuple[float, ...]) -> list[tuple[float, float, float]]:
    """``(error, width, penalty)`` for each entry of ``errors`` ``(widths, penalties)``."""
    return [(errors[w, p].item(), width, penalty)
            for w, width in enumerate(widths) for p, penalty in enumerate(KERNEL_PENALTIES)]
