"""The training loop: seeded, learns, stops early on the best epoch, survives Ctrl-C, bf16, batching."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from chemtag import training
from chemtag.heads import LinearHead
from chemtag.model import TaggedModel
from chemtag.tags import Tag
from chemtag.templates import EncodedPrompts, Template, TemplateEncoder
from chemtag.training import (TrainingConfig, length_bucketed_batches, predict, train, trained_through_cache,
                              validation_split, warm_up)

P = 4
TEMPLATE = "Input: The text is <Text> {text}. Output: The count is <Count>"
mse = nn.functional.mse_loss


def _strings(n: int, seed: int, alphabet: str = "CO") -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(alphabet), size=rng.integers(4, 13))) for _ in range(n)]


def _model(backbone, seed: int = 0, head: nn.Module | None = None) -> TaggedModel:
    torch.manual_seed(seed)
    tags = [Tag.initialise("Text", "domain", backbone, P), Tag.initialise("Count", "function", backbone, P)]
    return TaggedModel(backbone, tags, head or nn.Linear(backbone.hidden_size, 1), trainable=["Count"])


def _prompts(model: TaggedModel, texts: list[str]) -> EncodedPrompts:
    encoder = TemplateEncoder(Template.parse(TEMPLATE), model.backbone.tokenizer, model.tag_names, P)
    return encoder.encode({"text": texts})


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    """Targets unrelated to the inputs, all distinct: a fit can only overfit them."""
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed))


def _config(**overrides) -> TrainingConfig:
    settings = dict(max_epochs=3, batch_size=8, lr=1e-2, validation_fraction=0.25, patience=3, verbose=0,
                    random_state=0)
    return TrainingConfig(**{**settings, **overrides})


def _assert_same_state(first: nn.Module, second: nn.Module) -> None:
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for key in first_state:
        assert torch.equal(first_state[key], second_state[key]), key


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def test_seeded_fits_are_identical(tiny_llama):
    texts, targets = _strings(40, seed=0), _noise(40)
    fits = []
    for random_state in (0, 0, 1):
        model = _model(tiny_llama)
        history = train(model, _prompts(model, texts), targets, mse, _config(random_state=random_state))
        fits.append((model, history))
    (first, first_history), (second, second_history), (other, _) = fits
    _assert_same_state(first, second)
    assert _without_timings(first_history) == _without_timings(second_history)
    assert not torch.equal(first.tag_vectors["Count"], other.tag_vectors["Count"]), "the seed matters"
    assert not torch.equal(first.tag_vectors["Count"], _model(tiny_llama).tag_vectors["Count"]), "the tag trained"
    assert torch.equal(first.tag_vectors["Text"], _model(tiny_llama).tag_vectors["Text"]), "the frozen tag did not"


def test_a_tiny_backbone_learns_to_count_a_letter(tiny_llama):
    texts = _strings(300, seed=1)
    counts = torch.tensor([[text.count("C")] for text in texts], dtype=torch.float32)
    train_rows, test_rows = np.arange(200), np.arange(200, 300)
    mean, std = counts[train_rows].mean(), counts[train_rows].std()
    targets = (counts - mean) / std
    model = _model(tiny_llama)
    prompts = _prompts(model, texts)
    config = _config(max_epochs=40, lr=1e-3, validation_fraction=0, patience=40)
    train(model, prompts.subset(train_rows), targets[train_rows], mse, config)
    predictions = predict(model, prompts.subset(test_rows), batch_size=64)
    variance = targets[test_rows].var(unbiased=False)
    assert mse(predictions, targets[test_rows]) < 0.3 * variance


def test_a_head_that_can_be_initialised_is_fitted_to_the_readouts_as_epoch_0(tiny_llama):
    texts = _strings(80, seed=7)
    counts = torch.tensor([[text.count("C") - 4.0] for text in texts])
    model = _model(tiny_llama, head=LinearHead(tiny_llama.hidden_size, 1))
    prompts = _prompts(model, texts)
    history = train(model, prompts, counts, mse, _config(max_epochs=1, lr=0.0))
    assert [record["epoch"] for record in history] == [0, 1]
    assert history[0]["best"] and not history[1]["best"], "with lr=0 epoch 1 cannot beat the fitted head"
    assert history[0]["valid_loss"] < 0.5 * counts.var().item(), "a linear probe of the readouts already counts"
    outputs = predict(model, prompts, batch_size=16)
    assert mse(outputs, counts).item() < counts.var().item()


def test_the_head_is_fitted_only_when_asked_and_only_at_the_start_of_a_fit(tiny_llama):
    texts, targets = _strings(40, seed=8), _noise(40)
    model = _model(tiny_llama, head=LinearHead(tiny_llama.hidden_size, 1))
    prompts = _prompts(model, texts)
    history = train(model, prompts, targets, mse, _config(max_epochs=1, initialise_head=False))
    assert [record["epoch"] for record in history] == [1]
    fresh = _model(tiny_llama, head=LinearHead(tiny_llama.hidden_size, 1))
    history = train(fresh, prompts, targets, mse, _config(max_epochs=1))
    statistics = fresh.head.feature_mean.clone()
    history = train(fresh, prompts, targets, mse, _config(max_epochs=2), history=history)
    assert [record["epoch"] for record in history] == [0, 1, 2, 3], "a continued fit keeps its head"
    assert torch.equal(fresh.head.feature_mean, statistics)


def _fit_counting_and_probe(backbone, **settings) -> tuple[TaggedModel, list[dict], torch.Tensor, torch.Tensor,
                                                           torch.Tensor]:
    """Fit a LinearHead model to count "C" (2 epochs, lr 1e-2, no validation rows, ``settings``); the model,
    its history, its head's outputs and a fresh probe's outputs on its readouts of the rows, and the targets."""
    texts = _strings(48, seed=9)
    model = _model(backbone, head=LinearHead(backbone.hidden_size, 1))
    prompts = _prompts(model, texts)
    targets = torch.tensor([[text.count("C") - 4.0] for text in texts])
    config = _config(max_epochs=2, lr=1e-2, validation_fraction=0, **settings)
    history = train(model, prompts, targets, mse, config)
    # The readouts in the fit's own batches: the probe's penalty (1e-6) all but interpolates 48 rows of 64
    # features, so readouts that padding moves by 1e-6 would move its outputs by thousandths.
    head, model.head = model.head, nn.Identity()
    readouts = predict(model, prompts, batch_size=config.batch_size, prefix_cache=False)
    model.head = head
    probe = LinearHead(backbone.hidden_size, 1)
    probe.initialise(readouts, targets, mse)
    with torch.no_grad():
        return model, history, model.head(readouts), probe(readouts), targets


def test_refitting_the_head_leaves_it_fitted_to_the_trained_tags_readouts(tiny_llama):
    untrained_tag = _model(tiny_llama).tag_vectors["Count"]
    model, history, head_outputs, probe_outputs, targets = _fit_counting_and_probe(
        tiny_llama, head_training="refit", initialise_head=False, prefix_cache=False)

    assert [record["epoch"] for record in history] == [0, 1, 2], "refitting starts from the probe"
    assert history[0]["best"], "every epoch's training loss is a fitted head's: the probe's is comparable"
    assert not torch.equal(model.tag_vectors["Count"], untrained_tag), "the tag trained"
    torch.testing.assert_close(head_outputs, probe_outputs, atol=1e-4, rtol=1e-4)
    best = min(record["train_loss"] for record in history)
    assert mse(head_outputs, targets).item() == pytest.approx(best, rel=1e-4)


def test_joint_training_moves_the_head_away_from_the_probe(tiny_llama):
    _, _, head_outputs, probe_outputs, _ = _fit_counting_and_probe(tiny_llama, patience=5)
    assert not torch.allclose(head_outputs, probe_outputs, atol=1e-4, rtol=1e-4)


def test_head_training_is_checked(tiny_llama):
    model = _model(tiny_llama)
    prompts, targets = _prompts(model, _strings(16, seed=5)), _noise(16)
    with pytest.raises(ValueError, match=r"^head_training must be one of \('joint', 'refit'\), got 'closed'\.$"):
        train(model, prompts, targets, mse, _config(head_training="closed"))
    message = ("head_training='refit' needs a head with an initialise method (such as LinearHead); "
               "Linear has none.")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        train(model, prompts, targets, mse, _config(head_training="refit"))


class RecordingLoss:
    """MSE that records the targets of each validation call (no gradient) and can interrupt training."""

    def __init__(self, interrupt_after_validations: int | None = None):
        self.validation_targets: list[torch.Tensor] = []
        self.interrupt_after_validations = interrupt_after_validations
        self.steps_since_validation = 0

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not outputs.requires_grad:
            self.validation_targets.append(targets.clone())
            self.steps_since_validation = 0
        else:
            self.steps_since_validation += 1
            if (len(self.validation_targets) == self.interrupt_after_validations
                    and self.steps_since_validation == 2):
                raise KeyboardInterrupt
        return mse(outputs, targets)


def test_early_stopping_restores_the_best_epoch(tiny_llama):
    texts, targets = _strings(60, seed=2), _noise(60)
    model = _model(tiny_llama)
    prompts = _prompts(model, texts)
    loss = RecordingLoss()
    config = _config(max_epochs=30, lr=5e-2, patience=2)
    history = train(model, prompts, targets, loss, config)

    valid_losses = [record["valid_loss"] for record in history]
    best_flags = [record["best"] for record in history]
    assert best_flags == [value < min(valid_losses[:i], default=np.inf) for i, value in enumerate(valid_losses)]
    last_best = max(i for i, flag in enumerate(best_flags) if flag)
    assert len(history) < config.max_epochs, "stopped early"
    assert len(history) - 1 - last_best == config.patience

    row_of = {value: row for row, value in enumerate(targets[:, 0].tolist())}
    valid_rows = [row_of[value] for value in loss.validation_targets[-1][:, 0].tolist()]
    outputs = predict(model, prompts.subset(valid_rows), config.batch_size)
    assert mse(outputs, targets[valid_rows]).item() == pytest.approx(min(valid_losses), rel=1e-6)


def test_interrupting_keeps_the_best_weights(tiny_llama):
    texts, targets = _strings(60, seed=3), _noise(60)
    model = _model(tiny_llama)
    prompts = _prompts(model, texts)
    config = _config(max_epochs=10, patience=10)
    history = train(model, prompts, targets, RecordingLoss(interrupt_after_validations=2), config)
    assert [record["epoch"] for record in history] == [1, 2], "interrupted during epoch 3"

    reference = _model(tiny_llama)  # the same seeded run, stopped after epoch 2 on its own
    train(reference, prompts, targets, mse, _config(max_epochs=2, patience=10))
    _assert_same_state(model, reference)


def test_the_backbone_runs_in_eval_mode_while_training(tiny_gpt2):
    """GPT-2 has dropout: a backbone switched to training mode would make every forward random."""
    modes = []
    hook = tiny_gpt2.model.base_model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    try:
        model = _model(tiny_gpt2)
        train(model, _prompts(model, _strings(16, seed=6)), _noise(16), mse, _config(max_epochs=1))
    finally:
        hook.remove()
    assert modes and not any(modes)


def test_bf16_autocast_keeps_float32_master_weights(tiny_llama):
    model = _model(tiny_llama)
    history = train(model, _prompts(model, _strings(24, seed=4)), _noise(24), mse, _config(max_epochs=1, bf16=True))
    assert np.isfinite(history[0]["train_loss"]) and np.isfinite(history[0]["valid_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_verbosity(tiny_llama, capsys):
    model = _model(tiny_llama)
    prompts, targets = _prompts(model, _strings(16, seed=5)), _noise(16)
    train(model, prompts, targets, mse, _config(max_epochs=1, verbose=0))
    assert capsys.readouterr() == ("", "")
    train(model, prompts, targets, mse, _config(max_epochs=1, verbose=1))
    assert "valid_loss" in capsys.readouterr().out


def test_too_few_rows_for_a_validation_split_is_explained(tiny_llama):
    model = _model(tiny_llama)
    with pytest.raises(ValueError, match="validation_fraction"):
        train(model, _prompts(model, ["CO", "OC"]), _noise(2), mse, _config(validation_fraction=0.1))


def test_the_validation_split_holds_out_a_fraction_of_the_rows_or_of_their_groups():
    train_rows, valid_rows = validation_split(20, 0.25, np.random.default_rng(0))
    assert len(valid_rows) == 5 and sorted([*train_rows, *valid_rows]) == list(range(20))
    pairs = np.tile(np.arange(10), 2)  # rows i and i + 10 are copies of one input
    train_rows, valid_rows = validation_split(20, 0.2, np.random.default_rng(0), groups=pairs)
    assert sorted([*train_rows, *valid_rows]) == list(range(20))
    assert len(set(pairs[valid_rows])) == 2 and not set(pairs[valid_rows]) & set(pairs[train_rows])
    with pytest.raises(ValueError, match="with 10 groups of rows"):
        validation_split(20, 0.01, np.random.default_rng(0), groups=pairs)

def test_length_buckets_partition_rows_into_batches_of_neighbouring_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.permutation(100)  # all distinct
    batches = length_bucketed_batches(lengths, batch_size=8, rng=np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(100))
    assert max(len(batch) for batch in batches) == 8
    by_length = sorted(batches, key=lambda batch: lengths[batch].min())
    np.testing.assert_array_equal(np.concatenate([np.sort(lengths[b]) for b in by_length]), np.arange(100))
    again = length_bucketed_batches(lengths, batch_size=8, rng=np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_the_learning_rate_rises_linearly_over_the_warmup_steps():
    parameter = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    rates = []
    for _ in range(6):
        warm_up(optimizer, lr=0.1, warmup_steps=4)
        rates.append(optimizer.param_groups[0]["lr"])
        parameter.grad = torch.ones(2)
        optimizer.step()
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("history, expected", [
    ([], None),
    ([{"epoch": 0, "best": True}], None),  # saved before fits recorded the path
    ([{"epoch": 0, "best": True, "prefix_cache": False}, {"epoch": 1, "best": False, "prefix_cache": True}], False),
    ([{"epoch": 0, "best": False, "prefix_cache": True}, {"epoch": 1, "best": False, "prefix_cache": False}], False),
    ([{"epoch": 1, "best": True, "prefix_cache": False}, {"epoch": 2, "best": True, "prefix_cache": True}], True),
])
def test_the_kept_epoch_says_whether_the_weights_were_trained_through_the_prefix_cache(history, expected):
    assert trained_through_cache(history) is expected


@pytest.mark.parametrize("settings, kept_epoch, extra_passes", [
    (dict(max_epochs=0), 0, 0),  # the probe's weights are kept: its pass is reused
    (dict(max_epochs=1, lr=1.0, warmup_steps=1), 0, 0),  # so large a step that the probe stays best
    (dict(max_epochs=2, validation_fraction=0), 1, 1),  # epoch 1's weights: one more pass through the cache
    # The refit read epoch 2's weights last, but no refitted epoch beat the probe: one more pass.
    (dict(max_epochs=2, validation_fraction=0, head_training="refit"), 0, 1),
])
def test_kept_readouts_are_those_of_the_kept_weights_reusing_a_pass_that_read_them(
        tiny_llama, monkeypatch, settings, kept_epoch, extra_passes):
    texts = _strings(40, seed=10)
    targets = torch.tensor([[text.count("C") - 4.0] for text in texts])
    passes = []
    outputs = training._outputs
    monkeypatch.setattr(training, "_outputs", lambda *a, **k: passes.append(a[2]) or outputs(*a, **k))
    fits = {}
    for name, kept_readouts in (("without", None), ("with", [])):
        passes.clear()
        model = _model(tiny_llama, head=LinearHead(tiny_llama.hidden_size, 1))
        prompts = _prompts(model, texts)
        history = train(model, prompts, targets, mse, _config(**settings),
                        kept_readouts=None if kept_readouts is None else kept_readouts.append)
        fits[name] = model, history, len(passes), kept_readouts
    (_, history, passes_without, _), (model, _, passes_with, received) = fits["without"], fits["with"]
    assert [record for record in history if record["best"]][-1]["epoch"] == kept_epoch
    assert passes_with - passes_without == extra_passes
    assert len(received) == 1
    expected = predict(model, prompts, batch_size=8, prefix_cache=True, readouts_only=True)
    torch.testing.assert_close(received[0], expected, rtol=0, atol=1e-5)
