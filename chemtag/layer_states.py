"""The outputs of chosen decoder layers of a backbone's forward pass.

transformers can keep only some hidden states (``output_hidden_states=[...]``), but which index names
which layer has changed between its 5.x releases. Forward hooks on the decoder layers keep exactly the
layers asked for, whatever the version. The hooks are installed once per model and record only
inside :func:`capture_layer_states`, for the thread that opened it, so a backbone shared by several
threads (or estimators) records each caller's layers apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

_RECORDING: ContextVar[tuple[frozenset[int], dict[int, torch.Tensor]] | None] = ContextVar(
    "chemtag_layer_states", default=None)
_INSTALL = threading.Lock()
_HOOKED = "_chemtag_layer_state_hooks"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """``model``'s decoder layers, first to last: its module list as long as ``num_hidden_layers``
    (``layers`` in Llama-style models, ``h`` in GPT-2-style ones)."""
    count = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(model).__name__} has no list of {count} decoder layers to read hidden states from.")


@contextmanager
def capture_layer_states(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, forward passes of ``model`` on this thread store the output of each decoder
    layer in ``layers`` (numbered from 1; ``(B, L, d)``, before any final norm) in the yielded dict."""
    _install_hooks(model)
    states: dict[int, torch.Tensor] = {}
    token = _RECORDING.set((frozenset(layers), states))
    try:
        yield states
    finally:
        _RECORDING.reset(token)


def _install_hooks(model: nn.Module) -> None:
    with _INSTALL:
        if getattr(model, _HOOKED, False):
            return
        for number, layer in enumerate(decoder_layers(model), start=1):
            layer.register_forward_hook(_recorder(number))
        setattr(model, _HOOKED, True)


def _recorder(number: int) -> Callable[[nn.Module, tuple, object], None]:
    """A forward hook that stores decoder layer ``number``'s output where this thread's block asks for it."""

    def record(module: nn.Module, args, output) -> None:
        recording = _RECORDING.get()
        if recording is not None and number in recording[0]:
            recording[1][number] = output[0] if isinstance(output, tuple) else output
    return record
