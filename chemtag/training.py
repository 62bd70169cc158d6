"""The training loop for tags and heads: length-bucketed batches, AdamW, early stopping, history."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from chemtag.checkpoint import Checkpoint, TrainingState, fit_fingerprint
from chemtag.heads import group_index
from chemtag.losses import LossFunction
from chemtag.model import Batch, TaggedModel, autocast
from chemtag.parallel import ONE_PROCESS, Processes, average_gradients, shard, summed
from chemtag.prefix_cache import DEFAULT_MEMORY_BYTES, PrefixCache, PrefixCacheTooLarge
from chemtag.templates import EncodedPrompts

logger = logging.getLogger(__name__)

Batcher = Callable[[Sequence[int]], Batch]

HEAD_TRAININGS = ("joint", "refit")
"""The values of ``TrainingConfig.head_training``."""


@dataclass
class TrainingConfig:
    """How tags and head are trained.

    ``lr`` is AdamW's learning rate; ``validation_fraction`` of the rows (0 for none) is held out for
    early stopping after ``patience`` epochs without improvement, and the best epoch's weights are
    restored. ``bf16`` runs the backbone under bfloat16 autocast with float32 master weights.
    ``prefix_cache`` computes the keys/values of every prompt's frozen prefix once per fit when only
    function tags train (exact; see :mod:`chemtag.prefix_cache`), holding up to
    ``cache_memory_bytes`` in the backbone's device memory and the rest in a temporary memory-mapped file.
    ``initialise_head`` fits a head that can (one with an ``initialise`` method, such as
    :class:`~chemtag.heads.LinearHead`) to the readouts of the untrained tags before the first epoch
    of a fresh fit (a linear probe, recorded as epoch 0), so that training starts from it; with
    validation rows, epoch 0 is also a candidate for the best epoch restored at the end.
    ``warmup_steps``: the learning rate rises linearly from ``lr / warmup_steps`` to ``lr`` over a fit's
    first optimizer steps, so that Adam's first, sign-like steps do not throw the tags away from where
    the probe-fitted head expects them.
    ``head_training`` says how the head learns after the probe: ``"joint"`` trains it with the tags by
    AdamW; ``"refit"`` (a head with ``initialise`` only) keeps it fixed during each epoch's tag steps
    and fits it again after every epoch, as the probe is, to the readouts of the moved tags, so that the
    tags always train against the head that is best for their current readouts (an alternating,
    variable-projection scheme; an epoch's training loss is then the refitted head's, and its cost one
    extra forward pass over the training rows). ``"refit"`` starts every fresh fit with the probe,
    whatever ``initialise_head`` says.
    ``checkpoint_dir`` (a folder) receives a checkpoint after every epoch, epoch 0 included; a fit
    that finds its own checkpoint there resumes after its last epoch from the state saved and ends as
    the uninterrupted fit would have (bit for bit on the same machine). A completed fit's checkpoint
    stays, so that running the same fit again returns its result at once; a checkpoint of another
    fit is refused (see :mod:`chemtag.checkpoint`).
    """

    max_epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    validation_fraction: float = 0.1
    patience: int = 5
    bf16: bool = False
    verbose: int = 1
    random_state: int | None = 0
    prefix_cache: bool = True
    cache_memory_bytes: int = DEFAULT_MEMORY_BYTES
    initialise_head: bool = True
    warmup_steps: int = 100
    head_training: str = "joint"
    checkpoint_dir: str | Path | None = None


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = 50) -> list[np.ndarray]:
    """Shuffled batches of row indices of similar length, so that little compute goes to padding."""
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * bucket_batches):
        chunk = order[start:start + batch_size * bucket_batches]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def train(model: TaggedModel, prompts: EncodedPrompts, targets: torch.Tensor, loss_fn: LossFunction,
          config: TrainingConfig, history: list[dict] | None = None,
          processes: Processes = ONE_PROCESS, groups: np.ndarray | None = None,
          kept_readouts: Callable[[torch.Tensor], None] | None = None) -> list[dict]:
    """Train the model's trainable tags and head in place; return the history (one dict per epoch; its
    ``"prefix_cache"`` says whether the epoch ran through the prefix cache, see :func:`trained_through_cache`).

    ``targets`` ``(n, ...)`` are aligned with ``prompts``. ``groups`` ``(n,)``, where given, marks prompts
    that are copies of one input (e.g. both orders of a drug pair): a group's prompts stay together, all
    in training or all in validation, and in one fold of the head probe's cross-validation.
    Interrupting with Ctrl-C keeps the best weights so far. Passing an earlier ``history`` continues its
    epoch count (warm start). With ``config.checkpoint_dir`` a killed fit can be resumed by calling
    ``train`` again with the same arguments.

    With several ``processes`` (e.g. an ``accelerate.Accelerator`` under ``accelerate launch``) every
    process calls ``train`` with the same arguments: each trains on its :func:`~chemtag.parallel.shard`
    of every epoch's batches, gradients are averaged before each step, and the probe's readouts, the
    losses and so the history are combined over the processes, so that all of them hold the same
    weights and stop at the same epoch. Only the main process reports progress; checkpoints are refused.

    ``kept_readouts``, where given, is called once at the end with the head's inputs ``(n, d)`` for every
    prompt, in the prompts' order, under the weights the fit keeps (to fit another head to them, as the
    kernel head is): the last pass over all rows where it read those weights (the probe's, when no epoch
    improved on it), else one more pass through the fit's prefix cache.
    """
    if processes.num_processes > 1 and config.checkpoint_dir is not None:
        raise ValueError("checkpoint_dir is not supported in a fit over several processes; "
                         "leave it unset or fit in one process.")
    if not processes.is_main_process:
        config = dataclasses.replace(config, verbose=0)
    history = list(history or [])
    first_epoch = history[-1]["epoch"] + 1 if history else 1
    last_epoch = first_epoch + config.max_epochs - 1
    rng = np.random.default_rng(config.random_state)
    train_rows, valid_rows = validation_split(len(prompts), config.validation_fraction, rng, groups)
    torch_rng = torch.Generator().manual_seed(int(rng.integers(2**31))).get_state()
    refit_head = _refits_head(model, config)
    head_parameters = set(model.head.parameters()) if refit_head else set()
    parameters = [p for p in model.parameters() if p.requires_grad and p not in head_parameters]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    best_loss, best_state, stale = math.inf, None, 0
    checkpoint, complete = None, False
    last_pass: tuple[int, torch.Tensor] | None = None  # the latest pass over all rows: (epoch, its readouts)
    if config.checkpoint_dir is not None:
        fingerprint = fit_fingerprint(model, prompts, targets, loss_fn, config, first_epoch, groups)
        checkpoint = Checkpoint(config.checkpoint_dir, fingerprint)
        restored = checkpoint.load()
        if restored is not None:
            _restore(restored, model, optimizer, rng)
            history, best_state, best_loss, stale = (restored.history, restored.best_model, restored.best_loss,
                                                      restored.stale_epochs)
            train_rows, valid_rows, torch_rng = restored.train_rows, restored.valid_rows, restored.torch_rng
            complete = restored.complete
            if complete and kept_readouts is None:
                _keep_best(model, best_state)
                return history

    def save_checkpoint(torch_state: torch.Tensor, complete: bool) -> None:
        """Write where the fit stands after the epoch just recorded (with torch's random state then)."""
        if checkpoint is not None:
            checkpoint.save(TrainingState(model.state_dict(), best_state, optimizer.state_dict(), history, best_loss,
                                          stale, rng.bit_generator.state, torch_state, train_rows, valid_rows,
                                          complete))

    cache = None
    if config.prefix_cache and model.prefix_is_frozen:
        cache = _computed(PrefixCache(model, prompts), config.batch_size, config.bf16, config.cache_memory_bytes,
                          config.verbose)
    try:
        batcher = _batcher(model, prompts, cache)
        targets = targets.to(model.backbone.device)
        lengths = prompts.lengths

        if (config.initialise_head or refit_head) and not history and hasattr(model.head, "initialise"):
            record, readouts = _initialise_head(model, batcher, train_rows, valid_rows, lengths, targets, loss_fn,
                                                config, processes, groups)
            if kept_readouts is not None:
                last_pass = 0, readouts
            record["prefix_cache"] = cache is not None
            history.append(record)
            if record["best"]:
                best_loss, best_state = _monitored(record), copy.deepcopy(model.state_dict())
            save_checkpoint(torch_rng, complete=config.max_epochs == 0)
        epochs = [] if complete else range(history[-1]["epoch"] + 1 if history else first_epoch, last_epoch + 1)
        interrupted = False
        try:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(torch_rng)
                for epoch in epochs:
                    started = time.perf_counter()
                    record = {"epoch": epoch, **_epoch(model, optimizer, batcher, targets, lengths, train_rows,
                                                       valid_rows, loss_fn, config, processes, rng, epoch)}
                    if refit_head:
                        losses, readouts = _refit_head(model, batcher, train_rows, valid_rows, lengths, targets,
                                                       loss_fn, config, processes, groups)
                        record.update(losses)
                        if kept_readouts is not None:
                            last_pass = epoch, readouts
                    monitored = _monitored(record)
                    record.update(best=monitored < best_loss, prefix_cache=cache is not None,
                                  seconds=time.perf_counter() - started)
                    history.append(record)
                    if config.verbose > 0:
                        tqdm.write(_describe(record))
                    if record["best"]:
                        best_loss, best_state, stale = monitored, copy.deepcopy(model.state_dict()), 0
                    else:
                        stale += 1
                    stopping = not record["best"] and stale >= config.patience
                    save_checkpoint(torch.get_rng_state(), complete=stopping or epoch == last_epoch)
                    if stopping:
                        logger.info("Early stopping after epoch %d: no improvement in %d epochs.", epoch, stale)
                        break
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("Training interrupted; keeping the best weights so far.")
        finally:
            _keep_best(model, best_state)
        if kept_readouts is not None:
            kept = None if interrupted and best_state is None else _kept_record(history)  # None: mid-epoch weights
            if last_pass is not None and kept is not None and last_pass[0] == kept["epoch"]:
                kept_readouts(_in_prompt_order(last_pass[1], np.concatenate([train_rows, valid_rows])))
            else:
                kept_readouts(_outputs(model, batcher, np.arange(len(prompts)), lengths, config.batch_size,
                                       config.bf16, config.verbose, readouts_only=True, processes=processes,
                                       desc="readouts for the head"))
    finally:
        if cache is not None:
            cache.close()  # frees a spilled cache's disk now, not when a kept traceback lets it go
    return history


def trained_through_cache(history: Sequence[dict]) -> bool | None:
    """Whether the weights a fit with ``history`` kept (its last best epoch's, else its last epoch's) were
    trained through the prefix cache; None where the history does not record it (an empty one, or one
    saved before fits recorded it)."""
    kept = _kept_record(history)
    return None if kept is None else kept.get("prefix_cache")


def _kept_record(history: Sequence[dict]) -> dict | None:
    """The record of the epoch whose weights a completed fit keeps: its last best epoch's, else its last one's."""
    kept = [record for record in history if record.get("best")] or list(history[-1:])
    return kept[-1] if kept else None


def _in_prompt_order(readouts: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """``readouts`` of prompts ``rows`` (a permutation of all prompts) put in the prompts' order."""
    ordered = torch.empty_like(readouts)
    ordered[torch.as_tensor(rows)] = readouts
    return ordered


def _epoch(model: TaggedModel, optimizer: torch.optim.Optimizer, batcher: Batcher, targets: torch.Tensor,
           lengths: np.ndarray, train_rows: np.ndarray, valid_rows: np.ndarray, loss_fn: LossFunction,
           config: TrainingConfig, processes: Processes, rng: np.random.Generator, epoch: int) -> dict:
    """One pass of steps over ``train_rows`` in length-bucketed batches (this process's shard of them),
    then, with ``head_training="joint"``, the validation loss: ``{"train_loss": ..., "valid_loss": ...}``,
    combined over the processes."""
    batches = length_bucketed_batches(lengths[train_rows], config.batch_size, rng)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    total, seen = 0.0, 0
    progress = tqdm(shard(batches, processes), desc=f"epoch {epoch}", disable=config.verbose <= 0,
                    leave=config.verbose > 1)
    for batch_rows in progress:
        rows = train_rows[batch_rows]
        with autocast(model.backbone.device, config.bf16):
            loss = loss_fn(model(batcher(rows)), targets[rows])
        model.zero_grad(set_to_none=True)  # the head's gradients too where they are not stepped
        loss.backward()
        average_gradients(parameters, processes)
        warm_up(optimizer, config.lr, config.warmup_steps)
        optimizer.step()
        total += loss.item() * len(rows)
        seen += len(rows)
        progress.set_postfix(loss=f"{total / seen:.4f}")
    total, seen = summed(torch.tensor([total, seen], dtype=torch.float64), processes).tolist()
    losses = {"train_loss": total / seen}
    if len(valid_rows) and config.head_training == "joint":
        outputs = _outputs(model, batcher, valid_rows, lengths, config.batch_size, config.bf16, processes=processes)
        losses["valid_loss"] = loss_fn(outputs, targets[valid_rows].cpu()).item()
    return losses


def _monitored(record: dict) -> float:
    """The loss that ranks an epoch's record: its validation loss, or its training loss without validation rows."""
    return record.get("valid_loss", record["train_loss"])


def warm_up(optimizer: torch.optim.Optimizer, lr: float, warmup_steps: int) -> None:
    """Set the learning rate of the coming step: ``lr * min(1, (steps taken + 1) / warmup_steps)``."""
    state = next(iter(optimizer.state.values()), {})
    taken = int(state.get("step", 0))
    for group in optimizer.param_groups:
        group["lr"] = lr * min(1.0, (taken + 1) / max(warmup_steps, 1))


def _restore(state: TrainingState, model: TaggedModel, optimizer: torch.optim.Optimizer,
             rng: np.random.Generator) -> None:
    """Put the model, the optimizer and the batch-order Generator where a checkpoint left them."""
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    rng.bit_generator.state = state.numpy_rng


def _keep_best(model: TaggedModel, best_state: dict[str, torch.Tensor] | None) -> None:
    """End a fit: the best epoch's weights (where one improved), in eval mode."""
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()


def fit_head(head: torch.nn.Module, readouts: torch.Tensor, targets: torch.Tensor, train_rows: np.ndarray,
             valid_rows: np.ndarray, loss_fn: LossFunction, groups: np.ndarray | None = None) -> dict:
    """Fit ``head`` to fixed ``readouts`` ``(len(train_rows) + len(valid_rows), d)`` (training rows first)
    with its ``initialise`` (``groups`` of all rows: see :func:`train`); the fitted head's training (and
    validation) loss, ``{"train_loss": ..., "valid_loss": ...}``."""
    train_readouts, valid_readouts = readouts[:len(train_rows)], readouts[len(train_rows):]
    head.initialise(train_readouts, targets[train_rows], loss_fn, None if groups is None else groups[train_rows])
    with torch.no_grad():
        losses = {"train_loss": loss_fn(head(train_readouts), targets[train_rows]).item()}
        if len(valid_rows):
            losses["valid_loss"] = loss_fn(head(valid_readouts), targets[valid_rows]).item()
    return losses


def check_head_training(head_training: str) -> None:
    """Refuse a ``head_training`` that is not one of :data:`HEAD_TRAININGS`."""
    if head_training not in HEAD_TRAININGS:
        raise ValueError(f"head_training must be one of {HEAD_TRAININGS}, got {head_training!r}.")


def _refits_head(model: TaggedModel, config: TrainingConfig) -> bool:
    """Whether ``config`` refits the head after every epoch; refuses an unknown setting, or ``"refit"``
    for a head that cannot be fitted in closed form."""
    check_head_training(config.head_training)
    refit = config.head_training == "refit"
    if refit and not hasattr(model.head, "initialise"):
        raise ValueError(f"head_training='refit' needs a head with an initialise method (such as LinearHead); "
                         f"{type(model.head).__name__} has none.")
    return refit


def _refit_head(model: TaggedModel, batcher: Batcher, train_rows: np.ndarray, valid_rows: np.ndarray,
                lengths: np.ndarray, targets: torch.Tensor, loss_fn: LossFunction, config: TrainingConfig,
                processes: Processes, groups: np.ndarray | None) -> tuple[dict, torch.Tensor]:
    """Fit the head, as the probe is, to the readouts of the current tags: the refitted head's training
    (and validation) loss, and the readouts (of ``train_rows`` then ``valid_rows``). All ``processes`` fit
    to the same readouts, so they hold the same head."""
    readouts = _outputs(model, batcher, np.concatenate([train_rows, valid_rows]), lengths, config.batch_size,
                        config.bf16, config.verbose, readouts_only=True, processes=processes,
                        desc="readouts for the head")
    losses = fit_head(model.head, readouts.to(targets.device), targets, train_rows, valid_rows, loss_fn, groups)
    return losses, readouts


def _initialise_head(model: TaggedModel, batcher: Batcher, train_rows: np.ndarray, valid_rows: np.ndarray,
                     lengths: np.ndarray, targets: torch.Tensor, loss_fn: LossFunction,
                     config: TrainingConfig, processes: Processes,
                     groups: np.ndarray | None) -> tuple[dict, torch.Tensor]:
    """Fit the head to the readouts of the current tags (see ``TrainingConfig.initialise_head``); epoch 0's
    record, the best so far where validation rows score it or every epoch's head is refitted, and the
    readouts (as :func:`_refit_head` returns them)."""
    started = time.perf_counter()
    losses, readouts = _refit_head(model, batcher, train_rows, valid_rows, lengths, targets, loss_fn, config,
                                   processes, groups)
    record = {"epoch": 0, **losses}
    # Only held-out rows can rank the probe against jointly trained epochs: its own training loss is a fit's
    # optimum, as every epoch's is when the head is refitted.
    comparable = bool(len(valid_rows)) or config.head_training == "refit"
    record.update(best=comparable, seconds=time.perf_counter() - started)
    if config.verbose > 0:
        tqdm.write(_describe(record) + "  (head fitted to the initial readouts)")
    return record, readouts


def _computed(cache: PrefixCache, batch_size: int, bf16: bool, memory_bytes: int, verbose: int) -> PrefixCache | None:
    """``cache`` with its keys/values computed, or None (with a warning) where they fit neither memory nor disk."""
    started = time.perf_counter()
    try:
        cache.compute(batch_size, bf16, memory_bytes, verbose=verbose)
    except PrefixCacheTooLarge as error:
        logger.warning("%s Running without the prefix cache.", error)
        return None
    if verbose > 0:
        tqdm.write(f"prefix cache: {cache.describe()} in {time.perf_counter() - started:.1f}s")
    return cache


def _batcher(model: TaggedModel, prompts: EncodedPrompts, cache: PrefixCache | None) -> Batcher:
    """Rows of ``prompts`` -> a batch: their function tags after cached prefixes, or whole prompts."""
    if cache is not None:
        return cache.batch
    pad_id, device = model.backbone.tokenizer.pad_token_id, model.backbone.device
    return lambda rows: Batch.collate(prompts, rows, pad_id, device)


def validation_split(n: int, validation_fraction: float, rng: np.random.Generator,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted training and validation row indices of ``n`` rows, ``validation_fraction`` of them held out;
    with ``groups`` ``(n,)``, that fraction of the groups, each group's rows on one side."""
    group_of_row = group_index(groups, n)
    n_groups = int(group_of_row.max()) + 1 if n else 0
    drawn = rng.permutation(n_groups)
    n_valid = int(round(n_groups * validation_fraction)) if validation_fraction else 0
    if validation_fraction and (n_valid < 1 or n_valid >= n_groups):
        what = f"{n} rows" if groups is None else f"{n_groups} groups of rows"
        raise ValueError(
            f"validation_fraction={validation_fraction} leaves no rows for training or validation with "
            f"{what}; use more rows or validation_fraction=0."
        )
    held_out = np.isin(group_of_row, drawn[:n_valid])
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


def _describe(record: dict) -> str:
    text = f"epoch {record['epoch']:>3}  train_loss {record['train_loss']:.4f}"
    if "valid_loss" in record:
        text += f"  valid_loss {record['valid_loss']:.4f}"
    return text + f"  {record['seconds']:.1f}s" + ("  *" if record["best"] else "")


@torch.no_grad()
def predict(model: TaggedModel, prompts: EncodedPrompts, batch_size: int, bf16: bool = False,
            verbose: int = 0, prefix_cache: bool | None = None,
            cache_memory_bytes: int = DEFAULT_MEMORY_BYTES, readouts_only: bool = False) -> torch.Tensor:
    """Head outputs for every prompt, ``(n, k)`` float32 on the CPU, in the prompts' order (with
    ``readouts_only`` the head's inputs, ``(n, (1 + pooled_fields) * d)``).

    ``prefix_cache`` runs the function tags against a :class:`~chemtag.prefix_cache.PrefixCache`
    (same outputs in float32); ``None`` uses one when prompts share enough of their prefixes that the
    distinct pieces hold at most three quarters of all prefix tokens (isolated segments that repeat),
    and always under ``bf16`` for a model whose prefix is frozen: such a model is trained through the
    cache, and bfloat16 rounds the two paths differently by more than the readouts' input-dependent
    part can bear (see docs/training.md). Pass ``False`` for a bf16 model whose fit ran without the
    cache (one too large for memory and disk): see :func:`trained_through_cache`.
    """
    cache = PrefixCache(model, prompts) if prefix_cache is not False else None
    frozen_prefix_under_bf16 = bf16 and model.prefix_is_frozen
    if prefix_cache is None and not frozen_prefix_under_bf16 and cache.cached_tokens > 0.75 * cache.prefix_tokens:
        cache = None
    if cache is not None:
        cache = _computed(cache, batch_size, bf16, cache_memory_bytes, verbose)
    rows = np.arange(len(prompts))
    try:
        return _outputs(model, _batcher(model, prompts, cache), rows, prompts.lengths, batch_size, bf16, verbose,
                        readouts_only)
    finally:
        if cache is not None:
            cache.close()


@torch.no_grad()
def _outputs(model: TaggedModel, batcher: Batcher, rows: np.ndarray, lengths: np.ndarray, batch_size: int,
             bf16: bool, verbose: int = 0, readouts_only: bool = False,
             processes: Processes = ONE_PROCESS, desc: str = "predict") -> torch.Tensor:
    """Head outputs ``(len(rows), k)`` (or the head's inputs ``(len(rows), d)`` with ``readouts_only``)
    float32 on the CPU for prompts ``rows``, in that order; ``verbose`` shows a progress bar named ``desc``.

    Rows run in batches of similar length. With several ``processes`` and at least one batch for each,
    each process computes every N-th batch and the results are summed over the processes (the others'
    rows are zeros), so every process returns the same outputs: those one process computes alone."""
    compute = model.readout_states if readouts_only else model
    model.eval()
    order = np.argsort(lengths[rows], kind="stable")
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    sharded = len(batches) >= processes.num_processes > 1
    mine = batches[processes.process_index::processes.num_processes] if sharded else batches
    outputs = []
    for positions in tqdm(mine, desc=desc, unit="batch", disable=verbose <= 0, leave=False):
        with autocast(model.backbone.device, bf16):
            outputs.append(compute(batcher(rows[positions])).float().cpu())
    result = torch.cat(outputs)
    unsorted = torch.zeros((len(rows), *result.shape[1:]), dtype=result.dtype)
    unsorted[torch.as_tensor(np.concatenate(mine))] = result
    return summed(unsorted, processes) if sharded else unsorted
