"""The linear head: starts neutral, standardises features, and fits a linear probe to fixed readouts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from chemtag.heads import DEFAULT_PENALTY, PENALTIES, PROBE_FOLDS, LinearHead

D = 32
mse = nn.functional.mse_loss


def _readouts(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states like a causal LM's: a large shared offset (one massive feature) plus a small
    input-dependent part ``(n, 4)`` that targets depend on."""
    generator = torch.Generator().manual_seed(seed)
    offset = torch.randn(D, generator=generator)
    offset[0] = 40.0
    signal = torch.randn(n, 4, generator=generator)
    mixing = torch.randn(4, D, generator=generator)
    return offset + 0.05 * signal @ mixing, signal


def test_a_fresh_head_predicts_zero_for_every_input():
    head = LinearHead(D, 3)
    outputs = head(torch.randn(5, D) * 100)
    assert torch.equal(outputs, torch.zeros(5, 3))


def test_initialise_standardises_every_feature_of_the_normalised_readouts():
    readouts, signal = _readouts(200, seed=0)
    head = LinearHead(D, 1)
    head.initialise(readouts, signal[:, :1], mse)
    features = head.features(readouts)
    torch.testing.assert_close(features.mean(dim=0), torch.zeros(D), atol=1e-4, rtol=0)
    torch.testing.assert_close(features.std(dim=0, unbiased=False), torch.full((D,), 1 / math.sqrt(D)), atol=0, rtol=0.05)


def test_fitting_the_standardisation_alone_leaves_the_head_predicting_zero():
    readouts, _ = _readouts(50, seed=4)
    head = LinearHead(D, 1)
    head.fit_standardisation(readouts)
    torch.testing.assert_close(head.features(readouts).mean(dim=0), torch.zeros(D), atol=1e-4, rtol=0)
    assert torch.equal(head(readouts), torch.zeros(50, 1))


def test_the_probe_finds_a_linear_signal_hidden_under_a_large_offset():
    readouts, signal = _readouts(300, seed=1)
    targets = signal @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    head = LinearHead(D, 1)
    head.initialise(readouts[:200], targets[:200], mse)
    assert mse(head(readouts[200:]), targets[200:]) < 0.01 * targets[200:].var()


def test_cross_validation_chooses_a_strong_penalty_for_noise_and_a_weak_one_for_signal():
    readouts, signal = _readouts(120, seed=2)
    noise = torch.randn(120, 1, generator=torch.Generator().manual_seed(3))
    chosen_for_noise = LinearHead(D, 1).initialise(readouts, noise, mse)
    chosen_for_signal = LinearHead(D, 1).initialise(readouts, signal[:, :1], mse)
    assert chosen_for_noise in PENALTIES and chosen_for_signal in PENALTIES
    assert chosen_for_noise >= 1.0 and chosen_for_signal <= 1e-3


def test_copies_of_a_row_share_a_fold_so_that_memorising_noise_is_not_rewarded():
    generator = torch.Generator().manual_seed(1)
    readouts, noise = torch.randn(28, D, generator=generator), torch.randn(28, 1, generator=generator)
    copies, copied_noise, rows = readouts.repeat(2, 1), noise.repeat(2, 1), torch.arange(28).repeat(2).numpy()
    chosen_without_copies = LinearHead(D, 1).initialise(readouts, noise, mse)
    assert chosen_without_copies > min(PENALTIES)
    # each row's copy sits in another fold: the weakest penalty predicts it best
    assert LinearHead(D, 1).initialise(copies, copied_noise, mse) == min(PENALTIES)
    assert LinearHead(D, 1).initialise(copies, copied_noise, mse, groups=rows) == chosen_without_copies

def test_with_fewer_than_two_rows_a_fold_the_default_penalty_is_used():
    readouts, signal = _readouts(2 * PROBE_FOLDS - 1, seed=4)
    assert LinearHead(D, 1).initialise(readouts, signal[:, :1], mse) == DEFAULT_PENALTY


def test_the_probe_of_noise_predicts_close_to_the_mean():
    readouts, _ = _readouts(200, seed=7)
    noise = torch.randn(200, 1, generator=torch.Generator().manual_seed(8))
    head = LinearHead(D, 1)
    head.initialise(readouts[:150], noise[:150], mse)
    assert mse(head(readouts[150:]), noise[150:]) < 1.1 * mse(noise[:150].mean().expand(50, 1), noise[150:])


def test_the_probe_fits_classes_with_cross_entropy():
    readouts, signal = _readouts(200, seed=5)
    labels = signal[:, :3].argmax(dim=1)  # three linearly separable classes
    head = LinearHead(D, 3)
    head.initialise(readouts[:150], labels[:150], nn.functional.cross_entropy)
    accuracy = (head(readouts[150:]).argmax(dim=1) == labels[150:]).float().mean()
    assert accuracy > 0.9


@pytest.mark.parametrize("strict", [True, False])
def test_a_head_saved_without_standardisation_statistics_loads_with_the_identity(strict):
    old = {"linear.weight": torch.randn(1, D), "linear.bias": torch.randn(1)}
    head = LinearHead(D, 1)
    head.initialise(*_readouts(40, seed=6)[0:1], torch.zeros(40, 1), mse)  # non-identity statistics
    head.load_state_dict(old, strict=strict)
    hidden = torch.randn(3, D)
    expected = nn.functional.layer_norm(hidden, (D,)) / math.sqrt(D) @ old["linear.weight"].T + old["linear.bias"]
    torch.testing.assert_close(head(hidden), expected)


def test_blocks_side_by_side_are_layer_normalised_each_on_its_own():
    readout, pooled = _readouts(20, seed=0)[0], _readouts(20, seed=1)[0]
    head = LinearHead(D, 1, blocks=2)
    together = head.normalised(torch.cat([readout, 1000 * pooled], dim=1))
    torch.testing.assert_close(together, torch.cat([head.norm(readout), head.norm(pooled)], dim=1))
    assert head.linear.in_features == 2 * D and head.feature_mean.shape == (2 * D,)
