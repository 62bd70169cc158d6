"""Capturing chosen decoder layers' outputs: the same states as transformers' ``output_hidden_states``,
recorded only inside the block and only for the thread that opened it."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from chemtag.layer_states import capture_layer_states, decoder_layers


def _ids(backbone, seed: int) -> torch.Tensor:
    return torch.randint(3, backbone.model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(seed))


def _reference(backbone, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All hidden states as transformers returns them: ``[0]`` the embeddings, ``[i]`` decoder layer i's output."""
    with torch.no_grad():
        return backbone.model.base_model(input_ids=ids, output_hidden_states=True).hidden_states


def test_captured_layers_are_transformers_hidden_states_of_those_layers(tiny_backbone):
    layers = range(1, tiny_backbone.num_layers)  # the last is tied to the final norm's output by transformers
    ids = _ids(tiny_backbone, 0)
    with capture_layer_states(tiny_backbone.model, layers) as captured, torch.no_grad():
        tiny_backbone.model.base_model(input_ids=ids)
    reference = _reference(tiny_backbone, ids)
    assert sorted(captured) == list(layers)
    for layer in layers:
        torch.testing.assert_close(captured[layer], reference[layer], rtol=0, atol=0)


def test_only_the_layers_asked_for_are_kept_and_nothing_after_the_block(tiny_llama):
    with capture_layer_states(tiny_llama.model, [1]) as captured, torch.no_grad():
        tiny_llama.model.base_model(input_ids=_ids(tiny_llama, 0))
    kept = captured[1]
    with torch.no_grad():
        tiny_llama.model.base_model(input_ids=_ids(tiny_llama, 1))
    assert list(captured) == [1] and captured[1] is kept


def test_each_thread_records_its_own_forward_passes(tiny_llama):
    opened, other_ran = threading.Event(), threading.Event()
    ids = {"mine": _ids(tiny_llama, 0), "other": _ids(tiny_llama, 1)}
    recorded = {}

    def mine() -> None:
        with capture_layer_states(tiny_llama.model, [1]) as captured:
            opened.set()
            other_ran.wait(timeout=30)
            recorded["before my forward"] = dict(captured)
            with torch.no_grad():
                tiny_llama.model.base_model(input_ids=ids["mine"])
        recorded["mine"] = captured[1]

    def other() -> None:
        opened.wait(timeout=30)
        with torch.no_grad():
            tiny_llama.model.base_model(input_ids=ids["other"])
        other_ran.set()

    threads = [threading.Thread(target=mine), threading.Thread(target=other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert recorded["before my forward"] == {}, "another thread's forward pass is not recorded"
    torch.testing.assert_close(recorded["mine"], _reference(tiny_llama, ids["mine"])[1], rtol=0, atol=0)


def test_a_model_without_a_list_of_its_decoder_layers_is_refused():
    model = nn.Module()
    model.config, model.base_model = SimpleNamespace(num_hidden_layers=3), nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Module has no list of 3 decoder layers"):
        decoder_layers(model)
