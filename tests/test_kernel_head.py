"""The kernel ridge head: what it fits, how it chooses, and how estimators keep it."""

import pickle
import re

import numpy as np
import pytest
import torch

import chemtag.estimators._base as estimator_base
from chemtag import QEDRegressor, kernel_head
from chemtag.heads import LinearHead
from chemtag.kernel_head import (DEFAULT_PENALTY, DEFAULT_WIDTH, KERNEL_PENALTIES, KERNEL_WIDTHS, KernelHead,
                                 _cross_validated_errors, _ridge, laplacian_kernel, mean_absolute_distances,
                                 standardised)
from chemtag.losses import squared_error

FAST = dict(backbone="tiny-llama", max_epochs=1, verbose=0, validation_fraction=0)
SMILES = ["CCO", "c1ccccc1", "CCN", "CC(=O)O", "CCCC", "c1ccncc1", "CC(C)O", "OCCO", "CCOC", "C1CCCCC1", "CCCl", "CCBr"]
TARGETS = np.arange(len(SMILES), dtype=float) / 10


def _fitted_base(readouts: torch.Tensor, targets: torch.Tensor) -> LinearHead:
    base = LinearHead(readouts.shape[1], 1)
    base.initialise(readouts, targets, squared_error)
    return base


def test_the_laplacian_kernel_is_one_at_zero_distance_and_decays_with_the_mean_absolute_difference():
    a = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    kernel = laplacian_kernel(a, a, width=2.0)
    torch.testing.assert_close(kernel, torch.tensor([[1.0, np.exp(-4.0)], [np.exp(-4.0), 1.0]], dtype=torch.float32))


def test_the_kernel_head_fits_a_function_the_linear_head_cannot():
    generator = torch.Generator().manual_seed(0)
    readouts = torch.randn(600, 8, generator=generator)
    targets = readouts[:, 0] * readouts[:, 1]  # uncorrelated with every feature
    train, test = slice(0, 500), slice(500, None)
    base = _fitted_base(readouts[train], targets[train])
    head, _ = KernelHead.fit(base, readouts[train], targets[train])
    variance = targets[test].var().item()
    with torch.no_grad():
        assert squared_error(base(readouts[test]), targets[test]).item() > 0.9 * variance
        assert squared_error(head(readouts[test]), targets[test]).item() < 0.6 * variance


def test_cross_validation_scores_each_width_and_penalty_as_a_ridge_fit_per_fold_would():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(40, 1, generator=generator, dtype=torch.float64)
    fold = torch.arange(40) % 5
    distances = mean_absolute_distances(features, features)
    errors = {(width, penalty): error for error, width, penalty in _cross_validated_errors(distances, y, fold)}
    assert set(errors) == {(w, p) for w in KERNEL_WIDTHS for p in KERNEL_PENALTIES}
    width, penalty = KERNEL_WIDTHS[1], KERNEL_PENALTIES[3]
    kernel = laplacian_kernel(features, features, width)
    squared = 0.0
    for k in range(5):
        fitted, held = fold != k, fold == k
        offset = y[fitted].mean(dim=0)
        coef = _ridge(kernel[fitted][:, fitted], y[fitted] - offset, penalty)
        squared += (kernel[held][:, fitted] @ coef + offset - y[held]).square().sum().item()
    assert errors[width, penalty] == pytest.approx(squared / 40, rel=1e-8)


def test_groups_keep_copies_of_a_row_out_of_each_others_folds():
    generator = torch.Generator().manual_seed(2)
    readouts = torch.randn(61, 4, generator=generator).repeat(2, 1)  # every row twice, like both drug orders
    targets = torch.randn(61, generator=generator).repeat(2)  # noise: nothing to learn
    base = _fitted_base(readouts, targets)
    _, error_by_row = KernelHead.fit(base, readouts, targets)  # row i in fold i % 5, its copy i + 61 in another
    _, error_by_group = KernelHead.fit(base, readouts, targets, groups=np.tile(np.arange(61), 2))
    assert error_by_row < 0.1, "a copy in another fold gives its twin's target away"
    assert error_by_group > 0.9 * targets.var().item()


def test_with_too_few_groups_to_cross_validate_the_kernel_head_takes_the_default_width_and_penalty():
    readouts, targets = torch.randn(12, 3), torch.randn(12)
    head, error = KernelHead.fit(_fitted_base(readouts, targets), readouts, targets, groups=np.arange(12) % 4)
    assert (head.width.item(), head.penalty.item()) == (DEFAULT_WIDTH, DEFAULT_PENALTY) and np.isnan(error)


def test_the_kernel_head_reads_the_base_heads_standardised_features():
    generator = torch.Generator().manual_seed(3)
    readouts = 5 + 0.1 * torch.randn(50, 4, generator=generator)
    targets = torch.randn(50, generator=generator)
    base = _fitted_base(readouts, targets)
    head, _ = KernelHead.fit(base, readouts, targets)
    with torch.no_grad():
        torch.testing.assert_close(head.train_features, standardised(base, readouts))
    assert head.train_features.std(dim=0).mean().item() == pytest.approx(1.0, abs=0.05)


def test_an_estimator_with_the_kernel_head_predicts_the_same_after_pickle_and_save(tmp_path):
    model = QEDRegressor(head="kernel", **FAST).fit(SMILES, TARGETS)
    assert model.head_["kernel.train_features"].shape[0] == len(SMILES)
    assert model.head_["kernel.width"].item() in KERNEL_WIDTHS
    expected = model.predict(SMILES)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(SMILES), expected)
    np.testing.assert_array_equal(QEDRegressor.load(model.save(tmp_path / "model")).predict(SMILES), expected)


def test_the_kernel_head_replaces_the_linear_heads_predictions_only():
    linear = QEDRegressor(**FAST).fit(SMILES, TARGETS)
    kernel = QEDRegressor(head="kernel", **FAST).fit(SMILES, TARGETS)
    for name, tag in linear.tags_.items():
        torch.testing.assert_close(kernel.tags_[name].vectors, tag.vectors)
    assert not np.allclose(kernel.predict(SMILES), linear.predict(SMILES))
    kernel_only = {k for k in kernel.head_ if k.startswith("kernel.")}
    assert kernel.head_.keys() - kernel_only == linear.head_.keys()


def test_a_warm_start_trains_on_from_the_linear_head_and_fits_the_kernel_again():
    model = QEDRegressor(head="kernel", warm_start=True, **FAST).fit(SMILES, TARGETS)
    first = model.head_["kernel.coef"].clone()
    model.fit(SMILES, TARGETS[::-1].copy())
    assert [record["epoch"] for record in model.history_] == [0, 1, 2]
    assert not torch.allclose(model.head_["kernel.coef"], first)
    model.set_params(head="linear").fit(SMILES, TARGETS)
    assert not any(k.startswith("kernel.") for k in model.head_)


def test_an_unknown_head_is_refused():
    with pytest.raises(ValueError, match=re.escape("head must be one of ('linear', 'kernel'), got 'forest'.")):
        QEDRegressor(head="forest", **FAST).fit(SMILES, TARGETS)


def test_a_kernel_head_too_large_for_the_free_memory_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(kernel_head, "free_memory_bytes", lambda device: 2**30)
    monkeypatch.setattr(kernel_head, "KERNEL_BYTES_PER_ENTRY", 2**30 // 16)  # 12 rows: 144 entries, 9 GiB
    monkeypatch.setattr(estimator_base, "train", lambda *args, **kwargs: pytest.fail("trained before the check"))
    message = ("head='kernel' fits exactly over all 12 training rows and needs about 9.0 GiB for it (n² float64 "
               "kernels), more than the 1.0 GiB free on cpu. Use head='linear', or fewer training rows.")
    with pytest.raises(ValueError, match=re.escape(message)):
        QEDRegressor(head="kernel", **FAST).fit(SMILES, TARGETS)
