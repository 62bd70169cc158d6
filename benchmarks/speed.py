"""Stage-3 step speed: the frozen-prefix cache against the full forward pass, on Davis pairs.

Both paths run the same batches of one epoch (length-bucketed, seeded) with the backbone and the
domain tags frozen and the function tag and head training: forward, loss, backward. The cached path
computes its cache and runs the whole epoch; then the full path runs the first ``--full-steps``
batches of it, from which its epoch time is extrapolated (batches are shuffled, so these are a random
sample). Prints per-step and per-epoch time ratios, peak memory of each path and the largest
difference between the two paths' predictions on the full path's batches.

    .venv/bin/python benchmarks/speed.py --pairs 2000 --full-steps 4
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from chemtag.backbones import DEFAULT_BACKBONE, load_backbone
from chemtag.model import Batch, TaggedModel, autocast
from chemtag.prefix_cache import PrefixCache
from chemtag.tags import Tag
from chemtag.templates import Template, TemplateEncoder
from chemtag.training import length_bucketed_batches

DAVIS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "davis.csv.gz"
TEMPLATE = ("Input: The protein sequence is <Protein> {Target}. The SMILES of the drug is <SMILES> {Drug}. "
            "Output: The binding affinity is <BA>")


class PeakMemory:
    """Peak memory inside the block, in MiB: on the CPU the process's private resident memory (not
    counting pages of mapped files such as a spilled cache), sampled every 5 ms; on CUDA allocated memory."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0.0

    def _resident(self) -> float:
        with open("/proc/self/statm") as handle:
            _, resident, shared = (int(field) for field in handle.read().split()[:3])
        return (resident - shared) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self._resident())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._done = threading.Event()
            self.peak = self._resident()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._done.set()
            self._thread.join()


def davis_pairs(pairs: int, proteins: int | None = None) -> pd.DataFrame:
    """A seeded sample of ``pairs`` Davis training pairs (folds 0-4), from ``proteins`` distinct proteins if given."""
    frame = pd.read_csv(DAVIS)
    frame = frame[frame["fold"] != "test"]
    if proteins:
        chosen = pd.Series(frame["Target"].unique()).sample(n=proteins, random_state=0)
        frame = frame[frame["Target"].isin(chosen)]
    if pairs > len(frame):
        raise ValueError(f"--pairs {pairs}: the {proteins or 'all'} proteins drawn have only {len(frame)} training "
                         "pairs; ask for fewer pairs or more proteins.")
    return frame.sample(n=pairs, random_state=0)


def build_model(backbone, isolate: bool) -> TaggedModel:
    tags = [Tag.initialise("Protein", "domain", backbone), Tag.initialise("SMILES", "domain", backbone),
            Tag.initialise("BA", "function", backbone)]
    torch.manual_seed(0)
    head = nn.Linear(backbone.hidden_size, 1).to(backbone.device)
    return TaggedModel(backbone, tags, head, ["BA"], isolate_segments=isolate)


def timed_steps(model: TaggedModel, batches, make_batch, targets: torch.Tensor, bf16: bool) -> tuple[list[float], list]:
    """Seconds of forward + backward per batch, and the predictions of each batch."""
    seconds, predictions = [], []
    for rows in batches:
        started = time.perf_counter()
        with autocast(model.backbone.device, bf16):
            outputs = model(make_batch(rows))
            loss = nn.functional.mse_loss(outputs, targets[rows])
        model.zero_grad(set_to_none=True)
        loss.backward()
        if model.backbone.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        predictions.append(outputs.detach().float().cpu())
    return seconds, predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000, help="Davis pairs (from folds 0-4, seeded sample)")
    parser.add_argument("--proteins", type=int, default=None,
                        help="draw the pairs from this many distinct proteins (the cache build scales with them)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--full-steps", type=int, default=4, help="batches timed through the full path")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (and a bfloat16 cache)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="shared attention: the cache then holds a piece per template span (up to the end "
                             "of a field's value) and distinct content before it")
    parser.add_argument("--memory-gib", type=float, default=2.0, help="cache memory budget; the rest spills to disk")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 keeps timings stable on a machine shared with other jobs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        frame = davis_pairs(args.pairs, args.proteins)
    except ValueError as error:
        parser.error(str(error))
    backbone = load_backbone(args.backbone, device=args.device)
    model = build_model(backbone, args.isolate)
    encoder = TemplateEncoder(Template.parse(TEMPLATE), backbone.tokenizer, model.tag_names, model.tag_length)
    prompts = encoder.encode({"Target": frame["Target"].tolist(), "Drug": frame["Drug"].tolist()})
    y = frame["Y"].to_numpy(np.float32)
    targets = torch.as_tensor((y - y.mean()) / y.std())[:, None].to(backbone.device)
    batches = length_bucketed_batches(prompts.lengths, args.batch_size, np.random.default_rng(0))
    print(f"{args.pairs} pairs ({frame['Target'].nunique()} proteins, {frame['Drug'].nunique()} drugs), "
          f"{len(batches)} batches of {args.batch_size}, prompts of "
          f"{int(np.median(prompts.lengths))} tokens (median), {torch.get_num_threads()} threads, "
          f"{args.device}, {'bf16' if args.bf16 else 'fp32'}, isolate_segments={args.isolate}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    # The cached path first, from a clean process; its cache is freed before the full path runs.
    with PeakMemory(backbone.device) as cached_memory:
        started = time.perf_counter()
        cache = PrefixCache(model, prompts).compute(args.batch_size, args.bf16, int(args.memory_gib * 2**30), verbose=1)
        build_seconds = time.perf_counter() - started
        print(f"cache: {cache.describe()}, built in {build_seconds:.1f}s", flush=True)
        cached_seconds, cached_predictions = timed_steps(model, batches, cache.batch, targets, args.bf16)
    del cache
    print(f"cached path: {len(cached_seconds)} steps, {np.mean(cached_seconds):.2f}s each", flush=True)
    pad_id = backbone.tokenizer.pad_token_id
    full_batch = lambda rows: Batch.collate(prompts, rows, pad_id, backbone.device)  # noqa: E731
    with PeakMemory(backbone.device) as full_memory:
        full_seconds, full_predictions = timed_steps(model, batches[:args.full_steps], full_batch, targets, args.bf16)

    sampled = len(full_seconds)
    step_ratio = np.mean(full_seconds) / np.mean(cached_seconds[:sampled])
    cached_epoch, full_epoch = sum(cached_seconds), np.mean(full_seconds) * len(batches)
    difference = max((a - b).abs().max().item() for a, b in zip(full_predictions, cached_predictions))
    print(f"per step (same {sampled} batches): full {np.mean(full_seconds):.2f}s, cached "
          f"{np.mean(cached_seconds[:sampled]):.3f}s: {step_ratio:.1f}x")
    print(f"per epoch ({len(batches)} steps): full {full_epoch:.0f}s (extrapolated), cached {cached_epoch:.0f}s "
          f"(measured; mean step {np.mean(cached_seconds):.3f}s): {full_epoch / cached_epoch:.1f}x; "
          f"first epoch with the cache build {build_seconds:.0f}s: {full_epoch / (cached_epoch + build_seconds):.1f}x")
    memory_kind = "allocated" if backbone.device.type == "cuda" else "private resident"
    print(f"peak {memory_kind} memory: cached path (build + epoch) {cached_memory.peak:,.0f} MiB, "
          f"then full path {full_memory.peak:,.0f} MiB")
    print(f"max |prediction difference| full vs cached: {difference:.2e}; load average {os.getloadavg()[1]:.1f} "
          "over the last 5 minutes")


if __name__ == "__main__":
    main()
