"""The kernel ridge head: what it fits, how it chooses, and how estimators keep it."""

import pickle
import re

import numpy as np
import pytest
import torch

import chemtag.estimators._base as estimator_base
from chemtag import QEDRegressor, kernel_head
from chemtag.heads import LinearHead
from chemtag.kernel_head import (DEFAULT_KERNEL, DEFAULT_PENALTY, DEFAULT_WIDTH, KERNEL_PENALTIES,
                                 KERNEL_STATE_PREFIX, KERNEL_WIDTHS, KERNELS, KernelHead, _cross_validated_errors,
                                 _nystrom_cross_validated_errors, _nystrom_ridge, _ridge, kernel_matrix,
                                 mean_distances, standardised)
from chemtag.losses import squared_error

FAST = dict(backbone="tiny-llama", max_epochs=1, verbose=0, validation_fraction=0)
SMILES = ["CCO", "c1ccccc1", "CCN", "CC(=O)O", "CCCC", "c1ccncc1", "CC(C)O", "OCCO", "CCOC", "C1CCCCC1", "CCCl", "CCBr"]
TARGETS = np.arange(len(SMILES), dtype=float) / 10


def _fitted_base(readouts: torch.Tensor, targets: torch.Tensor) -> LinearHead:
    base = LinearHead(readouts.shape[1], 1)
    base.initialise(readouts, targets, squared_error)
    return base


@pytest.mark.parametrize("kernel, distance", [("laplacian", (1 + 3) / 2), ("gaussian", (1 + 9) / 2)])
def test_kernels_are_one_at_zero_distance_and_decay_with_the_mean_absolute_or_squared_difference(kernel, distance):
    a = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    off = np.exp(-2.0 * distance)
    torch.testing.assert_close(kernel_matrix(a, a, kernel, width=2.0),
                               torch.tensor([[1.0, off], [off, 1.0]], dtype=torch.float32))


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


@pytest.mark.parametrize("kernel_name", KERNELS)
def test_cross_validation_scores_each_width_and_penalty_as_a_ridge_fit_per_fold_would(kernel_name):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(40, 1, generator=generator, dtype=torch.float64)
    fold = torch.arange(40) % 5
    widths = KERNEL_WIDTHS[kernel_name]
    distances = mean_distances(features, features, kernel_name)
    errors = {(width, penalty): error for error, width, penalty in _cross_validated_errors(distances, y, fold, widths)}
    assert set(errors) == {(w, p) for w in widths for p in KERNEL_PENALTIES}
    width, penalty = widths[1], KERNEL_PENALTIES[3]
    kernel = kernel_matrix(features, features, kernel_name, width)
    squared = 0.0
    for k in range(5):
        fitted, held = fold != k, fold == k
        offset = y[fitted].mean(dim=0)
        coef = _ridge(kernel[fitted][:, fitted], y[fitted] - offset, penalty)
        squared += (kernel[held][:, fitted] @ coef + offset - y[held]).square().sum().item()
    assert errors[width, penalty] == pytest.approx(squared / 40, rel=1e-8)


@pytest.mark.parametrize("kernel_name", KERNELS)
def test_nystrom_over_every_row_is_the_exact_fit(kernel_name):
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    fold, every_row, widths = torch.arange(40) % 5, torch.arange(40), KERNEL_WIDTHS[kernel_name]
    distances = mean_distances(features, features, kernel_name)
    exact = _cross_validated_errors(distances, y, fold, widths)
    nystrom = _nystrom_cross_validated_errors(distances, every_row, y, fold, widths)
    assert [score[1:] for score in nystrom] == [score[1:] for score in exact]
    np.testing.assert_allclose([score[0] for score in nystrom], [score[0] for score in exact], rtol=1e-5)
    kernel = kernel_matrix(features, features, kernel_name, widths[1])
    torch.testing.assert_close(kernel @ _nystrom_ridge(kernel, every_row, y, 1e-3), kernel @ _ridge(kernel, y, 1e-3),
                               rtol=1e-6, atol=1e-9)


def test_nystrom_cross_validation_scores_each_fold_as_a_ridge_over_the_landmarks_would():
    generator = torch.Generator().manual_seed(6)
    features = torch.randn(60, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(60, 1, generator=generator, dtype=torch.float64)
    fold, landmarks, widths = torch.arange(60) % 5, torch.arange(0, 60, 3), KERNEL_WIDTHS["laplacian"]
    distances = mean_distances(features, features[landmarks], "laplacian")
    errors = {(w, p): e for e, w, p in _nystrom_cross_validated_errors(distances, landmarks, y, fold, widths)}
    width, penalty = widths[2], KERNEL_PENALTIES[4]
    kernel = torch.exp(-width * distances)
    squared = 0.0
    for k in range(5):  # minimise |y - K a|² + penalty aᵀ K_mm a over the other folds' rows
        fitted, held = fold != k, fold == k
        offset = y[fitted].mean(dim=0)
        normal = kernel[fitted].T @ kernel[fitted] + penalty * kernel[landmarks]
        coef = torch.linalg.solve(normal, kernel[fitted].T @ (y[fitted] - offset))
        squared += (kernel[held] @ coef + offset - y[held]).square().sum().item()
    assert errors[width, penalty] == pytest.approx(squared / 60, rel=1e-6)


def test_beyond_its_landmark_count_the_head_expands_over_that_many_seeded_landmark_rows():
    generator = torch.Generator().manual_seed(7)
    readouts = torch.randn(700, 8, generator=generator)
    targets = readouts[:, 0] * readouts[:, 1]
    train, test = slice(0, 600), slice(600, None)
    base = _fitted_base(readouts[train], targets[train])
    head, error = KernelHead.fit(base, readouts[train], targets[train], landmarks=150, seed=0)
    features = standardised(base, readouts[train])
    assert head.train_features.shape == (150, 8) and head.coef.shape == (150, 1)
    assert all((features == row).all(dim=1).any() for row in head.train_features), "landmarks are training rows"
    refit = KernelHead.fit(base, readouts[train], targets[train], landmarks=150, seed=0)[0]
    torch.testing.assert_close(refit.coef, head.coef)
    other_seed = KernelHead.fit(base, readouts[train], targets[train], landmarks=150, seed=1)[0]
    assert not torch.equal(other_seed.train_features, head.train_features)
    with torch.no_grad():
        assert squared_error(head(readouts[test]), targets[test]).item() < 0.6 * targets[test].var().item()
    assert error < 0.6 * targets[train].var().item()


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
    assert (head.kernel, head.width.item(), head.penalty.item()) == (DEFAULT_KERNEL, DEFAULT_WIDTH, DEFAULT_PENALTY)
    assert np.isnan(error)


def test_the_fit_takes_the_kernel_width_and_penalty_of_least_cross_validated_error_over_both_kernels():
    generator = torch.Generator().manual_seed(4)
    readouts = torch.randn(200, 8, generator=generator)
    targets = readouts[:, 0] * readouts[:, 1]
    base = _fitted_base(readouts, targets)
    head, error = KernelHead.fit(base, readouts, targets)
    features, y, fold = standardised(base, readouts).double(), targets[:, None].double(), torch.arange(200) % 5
    scores = {(kernel, width, penalty): score for kernel in KERNELS for score, width, penalty in
              _cross_validated_errors(mean_distances(features, features, kernel), y, fold, KERNEL_WIDTHS[kernel])}
    best = min(scores, key=scores.get)
    assert (head.kernel, head.width.item(), head.penalty.item()) == best and error == scores[best]
    assert best[0] != DEFAULT_KERNEL, "on these rows the other kernel wins, so a fit that ignored it would fail"


def test_a_kernel_head_saved_before_the_kernel_was_a_choice_loads_as_laplacian():
    readouts, targets = torch.randn(40, 3), torch.randn(40)
    base = _fitted_base(readouts, targets)
    head, _ = KernelHead.fit(base, readouts, targets)
    state = {name: value for name, value in head.kernel_state().items() if name != KERNEL_STATE_PREFIX + "kernel_index"}
    assert KernelHead.from_state(base, state).kernel == "laplacian"
    assert KernelHead.from_state(base, head.kernel_state()).kernel == head.kernel


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
    assert model.head_["kernel.width"].item() in KERNEL_WIDTHS[KERNELS[model.head_["kernel.kernel_index"].item()]]
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


def test_an_estimator_keeps_kernel_landmarks_rows_where_it_has_more_training_rows():
    model = QEDRegressor(head="kernel", kernel_landmarks=5, random_state=0, **FAST).fit(SMILES, TARGETS)
    assert model.head_["kernel.train_features"].shape[0] == 5 and model.head_["kernel.coef"].shape == (5, 1)
    assert np.isfinite(model.predict(SMILES)).all()
    assert QEDRegressor(head="kernel", kernel_landmarks=12, **FAST).fit(SMILES, TARGETS).head_[
        "kernel.train_features"].shape[0] == len(SMILES), "no more landmarks than rows: the exact fit"


@pytest.mark.parametrize("landmarks", [0, 2.5, True])
def test_kernel_landmarks_must_be_a_positive_integer(landmarks):
    with pytest.raises(ValueError, match=re.escape(f"kernel_landmarks must be a positive integer, got {landmarks!r}.")):
        QEDRegressor(head="kernel", kernel_landmarks=landmarks, **FAST).fit(SMILES, TARGETS)


def test_an_unknown_head_is_refused():
    with pytest.raises(ValueError, match=re.escape("head must be one of ('linear', 'kernel'), got 'forest'.")):
        QEDRegressor(head="forest", **FAST).fit(SMILES, TARGETS)


@pytest.mark.parametrize("landmarks, fit, gib", [(4096, "exactly", 9.0), (4, "with 4 landmark rows", 3.0)])
def test_a_kernel_head_too_large_for_the_free_memory_is_refused_before_training(landmarks, fit, gib, monkeypatch):
    monkeypatch.setattr(kernel_head, "free_memory_bytes", lambda device: 2**30)
    monkeypatch.setattr(kernel_head, "KERNEL_BYTES_PER_ENTRY", 2**30 // 16)  # 12 x 12 entries: 9 GiB; 12 x 4: 3 GiB
    monkeypatch.setattr(estimator_base, "train", lambda *args, **kwargs: pytest.fail("trained before the check"))
    message = (f"head='kernel' fits {fit} over all 12 training rows and needs about {gib} GiB for it (float64 "
               f"kernels), more than the 1.0 GiB free on cpu. Use head='linear', fewer kernel_landmarks, or fewer "
               f"training rows.")
    with pytest.raises(ValueError, match=re.escape(message)):
        QEDRegressor(head="kernel", kernel_landmarks=landmarks, **FAST).fit(SMILES, TARGETS)
