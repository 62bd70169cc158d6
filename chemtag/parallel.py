"""Data-parallel training over several processes: who does what, and how their results are combined.

Every process runs the same seeded fit; :func:`shard` hands each its share of the batches,
:func:`average_gradients` makes all processes take the same optimizer step, and :func:`summed`
combines numbers (losses, row counts, outputs) so that every process sees the same totals. An
``accelerate.Accelerator`` is a :class:`Processes`; :data:`ONE_PROCESS` is the plain single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, TypeVar

import torch

T = TypeVar("T")


class Processes(Protocol):
    """The processes of a data-parallel run, as seen from one of them (what an ``Accelerator`` offers)."""

    num_processes: int
    process_index: int
    is_main_process: bool
    device: torch.device

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """``tensor`` reduced (``"sum"`` or ``"mean"``) elementwise over all processes, on every process."""

    def wait_for_everyone(self) -> None:
        """Return once every process has called it."""


@dataclass(frozen=True)
class SingleProcess:
    """A run of one process: nothing to share or combine."""

    num_processes: int = 1
    process_index: int = 0
    is_main_process: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return tensor

    def wait_for_everyone(self) -> None:
        return None


ONE_PROCESS = SingleProcess()


def shard(items: Sequence[T], processes: Processes) -> list[T]:
    """This process's share of ``items`` (the same sequence on every process): every N-th item from its
    index, after repeating items from the start until N divides their count, so that every process gets
    the same number (and so takes as many optimizer steps). One process gets all of ``items``, in order."""
    n = processes.num_processes
    padded = [items[i % len(items)] for i in range(-(-len(items) // n) * n)]
    return padded[processes.process_index::n]


def average_gradients(parameters: Sequence[torch.nn.Parameter], processes: Processes) -> None:
    """Replace each parameter's gradient by its mean over the processes, in one reduction (a parameter
    without a gradient counts as a zero gradient). Does nothing with one process."""
    if processes.num_processes == 1:
        return
    gradients = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
    flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
    averaged = processes.reduce(flat.to(processes.device), reduction="mean").to(flat.device)
    for parameter, piece in zip(parameters, averaged.split([p.numel() for p in parameters])):
        parameter.grad = piece.view_as(parameter)


def summed(tensor: torch.Tensor, processes: Processes) -> torch.Tensor:
    """``tensor``'s elementwise sum over the processes, on ``tensor``'s device (reduced on the processes'
    device, since NCCL reduces CUDA tensors only). ``tensor`` itself with one process."""
    if processes.num_processes == 1:
        return tensor
    return processes.reduce(tensor.to(processes.device), reduction="sum").to(tensor.device)
