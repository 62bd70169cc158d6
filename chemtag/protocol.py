"""Tag-LLM's stage 1: domain tags learned by next-token prediction on unlabelled in-domain text.

A domain tag is trained on prompts ``<Domain> text``: the loss is the backbone's next-token
cross-entropy on the text tokens only, so the tag learns to tell the frozen model what kind of
text follows. Stages 2 and 3 are the estimators (function tags over frozen domain tags).
"""

from __future__ import annotations

import functools
import gzip
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from Bio import SeqIO
from torch.nn import functional
from tqdm.auto import tqdm

from chemtag.backbones import Backbone
from chemtag.model import Batch, TaggedModel, autocast
from chemtag.parallel import average_gradients
from chemtag.domains import get_domain
from chemtag.representations import convert
from chemtag.tags import DEFAULT_TAG_LENGTH, Tag, TagLibrary, file_sha256
from chemtag.templates import EncodedPrompts
from chemtag.training import length_bucketed_batches

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

IGNORE = -100


def spaced_residues(sequence: str) -> str:
    """``"MKT"`` -> ``"M K T"``: one token per residue for most tokenizers, as Tag-LLM wrote proteins."""
    return " ".join(sequence)


def encode_domain_texts(backbone: Backbone, texts: Sequence[str], tag_length: int | None,
                        max_tokens: int) -> EncodedPrompts:
    """Prompts ``<Domain> text`` (or just ``text`` when ``tag_length`` is None), text cut to ``max_tokens``.

    Tag slots index rows ``0..p-1`` of a one-tag table; ``readout`` is unused here.
    """
    tokenizer = backbone.tokenizer
    start = list(tokenizer("", add_special_tokens=True).input_ids)
    p = tag_length or 0
    bodies = tokenizer([" " + text for text in texts], add_special_tokens=False).input_ids
    encoded = EncodedPrompts([], [], [], np.zeros(len(texts), dtype=np.int64))
    for row, body in enumerate(bodies):
        ids = start + [tokenizer.pad_token_id] * p + body[:max_tokens]
        slots = [-1] * len(start) + list(range(p)) + [-1] * len(body[:max_tokens])
        encoded.input_ids.append(np.asarray(ids, dtype=np.int64))
        encoded.tag_slots.append(np.asarray(slots, dtype=np.int64))
        encoded.segments.append(np.zeros(len(ids), dtype=np.int64))
        encoded.readout[row] = len(ids) - 1
    return encoded


def _text_loss(model: TaggedModel | None, backbone: Backbone, batch: Batch) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the batch's text tokens, and how many there were."""
    if model is not None:
        embeds = model.input_embeddings(batch)
    else:
        embeds = backbone.embed(batch.input_ids)
    logits = backbone.model(inputs_embeds=embeds, attention_mask=batch.attention_mask.long(), use_cache=False).logits
    labels = batch.input_ids.masked_fill((batch.tag_slots >= 0) | ~batch.attention_mask, IGNORE)
    targets = labels[:, 1:]
    loss = functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
    return loss, int((targets != IGNORE).sum())


def _tag_model(backbone: Backbone, tag: Tag, trainable: bool) -> TaggedModel:
    return TaggedModel(backbone, [tag], torch.nn.Identity(), [tag.name] if trainable else [])


@torch.no_grad()
def text_loss(backbone: Backbone, texts: Sequence[str], tag: Tag | None = None, batch_size: int = 16,
              max_tokens: int = 128, bf16: bool = False) -> float:
    """Held-out next-token loss (nats per text token) of ``texts`` after ``tag``, or with no tag at all."""
    prompts = encode_domain_texts(backbone, texts, tag.length if tag else None, max_tokens)
    model = _tag_model(backbone, tag, trainable=False) if tag else None
    total, count = 0.0, 0
    pad = backbone.tokenizer.pad_token_id
    order = np.argsort(prompts.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        batch = Batch.collate(prompts, order[start:start + batch_size], pad, backbone.device)
        with autocast(backbone.device, bf16):
            loss, tokens = _text_loss(model, backbone, batch)
        total += loss.item() * tokens
        count += tokens
    return total / max(count, 1)


def pretrain_domain_tag(
    backbone: Backbone,
    texts: Sequence[str],
    name: str,
    *,
    tag_length: int = DEFAULT_TAG_LENGTH,
    steps: int = 500,
    batch_size: int = 16,
    lr: float = 1e-3,
    max_tokens: int = 128,
    bf16: bool = False,
    random_state: int = 0,
    verbose: int = 1,
    on_step: Callable[[int, float], None] | None = None,
    accelerator: "Accelerator | None" = None,
) -> tuple[Tag, list[dict]]:
    """Train the domain tag ``<name>`` by next-token prediction on ``texts`` for ``steps`` AdamW steps.

    Returns the tag (float32 ``(p, d)``, kind ``"domain"``, with provenance) and the per-step history
    of training losses. ``on_step(step, loss)`` is called after each step (e.g. for logging).

    Under ``accelerate launch`` pass the ``Accelerator``: each of the ``N`` processes takes every N-th
    batch of the same seeded order and the tag's gradient is averaged across processes before each
    step, so all processes hold the same tag (data-parallel, like DDP for this one parameter).
    """
    if len(texts) == 0:
        raise ValueError("pretrain_domain_tag needs at least one text.")
    tag = Tag.initialise(name, "domain", backbone, tag_length)
    model = _tag_model(backbone, tag, trainable=True)
    prompts = encode_domain_texts(backbone, texts, tag_length, max_tokens)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(random_state)
    pad = backbone.tokenizer.pad_token_id
    history, batches = [], []
    started = time.perf_counter()
    is_main = accelerator is None or accelerator.is_main_process
    progress = tqdm(range(1, steps + 1), desc=f"pretrain <{name}>", disable=verbose <= 0 or not is_main)
    processes = accelerator.num_processes if accelerator else 1
    rank = accelerator.process_index if accelerator else 0
    for step in progress:
        if len(batches) < processes:
            batches = length_bucketed_batches(prompts.lengths, batch_size, rng)
        rows = batches[-processes:][rank]
        del batches[-processes:]
        batch = Batch.collate(prompts, rows, pad, backbone.device)
        with autocast(model.backbone.device, bf16):
            loss, _ = _text_loss(model, backbone, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if accelerator:
            average_gradients([model.tag_vectors[name]], accelerator)
            loss = accelerator.reduce(loss.detach(), reduction="mean")
        optimizer.step()
        history.append({"step": step, "train_loss": loss.item()})
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if on_step:
            on_step(step, loss.item())
    trained = model.export_tags()[name]
    trained.provenance = {
        "stage": 1, "objective": "next-token prediction on text after the tag", "texts": len(texts),
        "steps": steps, "batch_size": batch_size, "lr": lr, "max_tokens": max_tokens, "seed": random_state,
        "bf16": bf16, "processes": accelerator.num_processes if accelerator else 1,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return trained, history


def read_corpus(path: str | Path) -> list[str]:
    """Texts of a corpus file: FASTA (``.fasta``/``.fa``, optionally gzipped) or one text a line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        if {".fasta", ".fa", ".faa"} & set(path.suffixes):
            return [str(record.seq) for record in SeqIO.parse(handle, "fasta")]
        return [line.strip() for line in handle if line.strip()]


def pretrain_into_library(backbone: Backbone, corpus: str | Path, domain: str, library_folder: str | Path, *,
                          limit: int | None = None, validation: int = 200, spaced: bool = False,
                          corpus_language: str | None = None, accelerator: "Accelerator | None" = None,
                          **options) -> dict:
    """Stage 1 end to end: read and validate ``corpus``, hold out ``validation`` texts, train ``<domain>``,
    measure held-out loss with no tag, the initial tag and the trained tag, and add the tag (with
    that provenance) to the library at ``library_folder`` (created, or extended if it exists).

    ``corpus_language`` names the molecular language the corpus is written in when it differs from
    ``domain``: each entry is converted (e.g. a SMILES corpus into SELFIES for ``<SELFIES>``), in
    corpus order, so that held-out entries are the same molecules as for the corpus's own language.
    With several processes (``accelerator``) only the main process measures and writes."""
    normalise = get_domain(domain).normalise
    if corpus_language not in (None, domain):
        normalise = functools.partial(convert, source=corpus_language, target=domain)
    raw = read_corpus(corpus)
    texts = [t for t in (normalise(text) for text in raw) if t]
    if len(texts) < len(raw):
        logger.warning("Dropped %d of %d corpus entries that are not valid %s.", len(raw) - len(texts), len(raw),
                       corpus_language or domain)
    if spaced:
        texts = [spaced_residues(text) for text in texts]
    rows = np.random.default_rng(options.get("random_state", 0)).permutation(len(texts))
    held_out = [texts[i] for i in rows[:validation]]
    training = [texts[i] for i in rows[validation:]][:limit]
    tag, history = pretrain_domain_tag(backbone, training, domain, accelerator=accelerator, **options)
    if accelerator is not None and not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return {}
    max_tokens = options.get("max_tokens", 128)
    measured = {
        "no_tag": text_loss(backbone, held_out, None, max_tokens=max_tokens),
        "initial_tag": text_loss(backbone, held_out, Tag.initialise(domain, "domain", backbone, tag.length), max_tokens=max_tokens),
        "trained_tag": text_loss(backbone, held_out, tag, max_tokens=max_tokens),
    }
    tag.provenance |= {
        "corpus": Path(corpus).name, "corpus_sha256": file_sha256(Path(corpus)), "spaced_residues": spaced,
        "corpus_language": corpus_language or domain,
        "validation_texts": len(held_out), "held_out_loss_nats_per_token": measured,
        "final_train_loss": float(np.mean([h["train_loss"] for h in history[-20:]])),
    }
    folder = Path(library_folder)
    library = TagLibrary.load(folder, backbone) if (folder / "manifest.json").is_file() else TagLibrary(backbone.fingerprint)
    library.add(tag)
    library.save(folder)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return measured
