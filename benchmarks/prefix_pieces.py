"""Prefix-cache build without isolated segments: pieces along the template's spans against one piece per prompt.

Without ``isolate_segments`` (the generic estimators' default, and the stage-3 ablation without domain
tags) every token attends to everything before it. The cache cuts each prefix at the template's spans,
so prompts that begin alike (one Davis protein written before 68 drugs) share their leading pieces;
before, it stored one piece per distinct prompt. Both plans are built here for the same Davis pairs
and model, one after the other in one process (a plan without the template's spans is the earlier one),
and timed; the readouts through both caches are compared.

    .venv/bin/python -m benchmarks.prefix_pieces --pairs 200 --proteins 10 --threads 1 --plain
    .venv/bin/python -m benchmarks.prefix_pieces --molecules 400 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import time

import torch

from benchmarks.speed import DAVIS, TEMPLATE, build_model, davis_pairs
from chemtag.backbones import DEFAULT_BACKBONE, load_backbone
from chemtag.prefix_cache import PrefixCache
from chemtag.templates import Template, TemplateEncoder

PLAIN_TEMPLATE = TEMPLATE.replace("<Protein> ", "").replace("<SMILES> ", "")  # the ablation's template
MOLECULE_TEMPLATE = "Input: The SMILES of the molecule is <SMILES> {Drug}. Output: The binding affinity is <BA>"
MOSES = DAVIS.parent / "smiles_moses_100k.txt.gz"


def timed_build(model, prompts, batch_size: int) -> tuple[PrefixCache, float]:
    started = time.perf_counter()
    cache = PrefixCache(model, prompts).compute(batch_size)
    return cache, time.perf_counter() - started


@torch.no_grad()
def readouts(model, cache: PrefixCache, n_rows: int, batch_size: int) -> torch.Tensor:
    return torch.cat([model.readout_states(cache.batch(range(i, min(i + batch_size, n_rows))))
                      for i in range(0, n_rows, batch_size)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200, help="Davis training pairs (seeded sample)")
    parser.add_argument("--proteins", type=int, default=10, help="distinct proteins the pairs are drawn from")
    parser.add_argument("--plain", action="store_true", help="the template without its domain tags")
    parser.add_argument("--molecules", type=int, default=None,
                        help="instead of Davis pairs, this many MOSES SMILES alone (prompts that share only "
                             "their opening text and tag)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.molecules:
        with gzip.open(MOSES, "rt") as handle:
            values = {"Drug": [line.strip() for line, _ in zip(handle, range(args.molecules))]}
        template, what = MOLECULE_TEMPLATE, f"{args.molecules} molecules"
    else:
        frame = davis_pairs(args.pairs, args.proteins)
        values = {"Target": frame["Target"].tolist(), "Drug": frame["Drug"].tolist()}
        template = PLAIN_TEMPLATE if args.plain else TEMPLATE
        what = f"{args.pairs} pairs ({frame['Target'].nunique()} proteins)"
    backbone = load_backbone(args.backbone)
    model = build_model(backbone, isolate=False)
    encoder = TemplateEncoder(Template.parse(template), backbone.tokenizer, model.tag_names, model.tag_length)
    prompts = encoder.encode(values)
    print(f"{what}, {template!r}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    per_prompt, per_prompt_seconds = timed_build(model, dataclasses.replace(prompts, spans=None), args.batch_size)
    print(f"one piece per prompt: {per_prompt.describe()}, built in {per_prompt_seconds:.1f}s", flush=True)
    per_span, per_span_seconds = timed_build(model, prompts, args.batch_size)
    print(f"pieces along the template's spans: {per_span.describe()}, built in {per_span_seconds:.1f}s", flush=True)
    difference = (readouts(model, per_prompt, len(prompts), args.batch_size)
                  - readouts(model, per_span, len(prompts), args.batch_size)).abs().max().item()
    print(f"build {per_prompt_seconds / per_span_seconds:.1f}x faster, "
          f"{per_prompt.cached_tokens / per_span.cached_tokens:.1f}x fewer tokens stored; "
          f"max |readout difference| {difference:.1e}; load average {os.getloadavg()[1]:.1f} over 5 minutes")


if __name__ == "__main__":
    main()
