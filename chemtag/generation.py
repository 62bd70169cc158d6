"""Generation with tags: the output is text written after the function tag by the backbone's LM head.

A generative prompt is a template prompt followed by its target text and the end token::

    Input: <SMILES> CCO Output: <SELFIES> <Translate> [C][C][O]<eos>

Training scores the backbone's next-token predictions of the target tokens and the end token only,
the first of them predicted at the last function-tag vector (the prompt's readout). Decoding feeds
the spliced prompt embeddings, left-padded, to Hugging Face ``generate`` (greedy or beam search,
with the KV cache) and stops at the end token or after ``max_new_tokens``.

Training goes through :func:`chemtag.training.train`: :class:`TaggedGenerator`'s forward returns
each row's summed target loss and token count, so batching, early stopping and the frozen-prefix
cache (the prompt before the function tag computed once) apply unchanged. The loss
(:func:`target_token_losses`) and decoding (:func:`generate_after`) also serve causal LMs without
tags, on :func:`untagged_prompts`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from chemtag.backbones import Backbone
from chemtag.model import Batch, TaggedModel, autocast, pad_rows
from chemtag.tags import Tag
from chemtag.templates import EncodedPrompts


def end_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends a generated text: the tokenizer's end-of-sequence token."""
    if tokenizer.eos_token_id is None:
        raise ValueError("Generation needs a tokenizer with an end-of-sequence token (eos_token).")
    return tokenizer.eos_token_id


def target_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each target text as written after the function tag (after a space), plus the end token."""
    end = end_token_id(tokenizer)
    return [ids + [end] for ids in tokenizer([" " + text for text in texts], add_special_tokens=False).input_ids]


def append_targets(prompts: EncodedPrompts, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> EncodedPrompts:
    """``prompts`` each followed by its target text and the end token; ``readout`` stays at the function tag."""
    if len(texts) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(texts)} target texts.")
    joined = EncodedPrompts([], [], [], prompts.readout.copy())
    for row, ids in enumerate(target_ids(tokenizer, texts)):
        joined.input_ids.append(np.concatenate([prompts.input_ids[row], ids]).astype(np.int64))
        joined.tag_slots.append(np.concatenate([prompts.tag_slots[row], np.full(len(ids), -1)]).astype(np.int64))
        joined.segments.append(np.concatenate([prompts.segments[row], np.zeros(len(ids))]).astype(np.int64))
    return joined


def target_positions(batch: Batch) -> torch.Tensor:
    """``(B, L)`` bool: positions whose next token is a target token, from the readout on.

    The batch is right-padded; token ``j`` is scored by the logits at ``j - 1``.
    """
    length = batch.input_ids.shape[1]
    index = torch.arange(length, device=batch.input_ids.device)
    return (index >= batch.readout[:, None]) & (index + 1 < batch.attention_mask.sum(dim=1, keepdim=True))


def target_loss(outputs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy per target token (nats) from :class:`TaggedGenerator` outputs
    ``(n, 2)`` (summed loss, token count per row). ``targets`` is unused: the tokens are in the prompts."""
    return outputs[:, 0].sum() / outputs[:, 1].sum().clamp_min(1)


def pad_rows_left(rows: Sequence[np.ndarray], fill, dtype=np.int64) -> np.ndarray:
    """Ragged 1-D arrays left-padded with ``fill`` into one ``(len(rows), max length)`` array."""
    return np.ascontiguousarray(pad_rows([row[::-1] for row in rows], fill, dtype)[:, ::-1])


def left_padded(prompts: EncodedPrompts, indices: Sequence[int], pad_id: int, device) -> Batch:
    """Prompts ``indices`` left-padded into a batch (generation appends tokens on the right)."""
    ids = pad_rows_left([prompts.input_ids[i] for i in indices], pad_id)
    to = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    return Batch(
        to(ids), to(pad_rows_left([prompts.tag_slots[i] for i in indices], -1)), to(np.zeros_like(ids)),
        to(pad_rows_left([np.ones(len(prompts.input_ids[i]), dtype=bool) for i in indices], False, bool)),
        to(np.full(len(indices), ids.shape[1] - 1)),
    )


def until_end(ids: Sequence[int], end: int) -> list[int]:
    """Generated ids up to (without) the first end token."""
    ids = list(ids)
    return ids[:ids.index(end)] if end in ids else ids


def untagged_prompts(ids: Sequence[Sequence[int]]) -> EncodedPrompts:
    """Prompts of vocabulary tokens only (no tag slots, one segment), each read out at its last token."""
    rows = [np.asarray(row, dtype=np.int64) for row in ids]
    return EncodedPrompts(rows, [np.full(len(row), -1) for row in rows], [np.zeros_like(row) for row in rows],
                          np.array([len(row) - 1 for row in rows], dtype=np.int64))


def target_token_losses(hidden: torch.Tensor, batch: Batch, lm_head: nn.Module) -> torch.Tensor:
    """``(B, 2)``: each row's summed next-token cross-entropy (nats) over its target tokens and their count,
    from the final hidden states ``(B, L, d)`` of the right-padded ``batch`` and the LM head; the prompt's
    tokens are never scored (:func:`target_positions`)."""
    scored = target_positions(batch)[:, :-1]
    labels = batch.input_ids[:, 1:][scored]
    logits = lm_head(hidden[:, :-1][scored])
    losses = functional.cross_entropy(logits.float(), labels, reduction="none")
    rows = scored.nonzero()[:, 0]
    sums = torch.zeros(len(scored), device=losses.device).index_add(0, rows, losses)
    return torch.stack([sums, scored.sum(dim=1).float()], dim=1)


@torch.no_grad()
def generate_after(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: EncodedPrompts,
                   embed: Callable[[Batch], torch.Tensor], max_new_tokens: int, num_beams: int = 1,
                   batch_size: int = 16, bf16: bool = False, verbose: int = 0,
                   stop_ids: Sequence[int] = ()) -> list[list[int]]:
    """Token ids ``lm`` writes after each prompt, without the end token: at most ``max_new_tokens`` each.

    ``embed`` maps a left-padded batch to its input embeddings ``(B, L, d)`` (tags spliced in, or the
    vocabulary embeddings alone). Greedy for ``num_beams=1``, else beam search; prompts are decoded
    ``batch_size`` at a time, sorted by length, with the KV cache, and stop at the end token or at any
    token of ``stop_ids`` (kept in the output).
    """
    end = end_token_id(tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                              eos_token_id=[end, *stop_ids], pad_token_id=tokenizer.pad_token_id)
    order = np.argsort(prompts.lengths, kind="stable")
    written: list[list[int]] = [[] for _ in range(len(prompts))]
    for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=verbose <= 0, leave=False):
        rows = order[start:start + batch_size]
        batch = left_padded(prompts, rows, tokenizer.pad_token_id, lm.device)
        with autocast(lm.device, bf16):
            outputs = lm.generate(inputs_embeds=embed(batch), attention_mask=batch.attention_mask.long(),
                                  generation_config=config)
        for row, ids in zip(rows, outputs.tolist()):
            written[row] = until_end(ids, end)
    return written


class TaggedGenerator(TaggedModel):
    """A tagged model whose output is text after the function tag, written by the backbone's LM head.

    ``forward`` returns ``(B, 2)``: each prompt's summed next-token loss over its target tokens (and
    end token) and their count; :func:`target_loss` turns that into the training loss. Segments are
    never isolated: generated tokens attend to the whole prompt.
    """

    def __init__(self, backbone: Backbone, tags: Sequence[Tag], trainable: Sequence[str]):
        super().__init__(backbone, tags, nn.Identity(), trainable, isolate_segments=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden, _ = self.hidden_states(batch)
        return target_token_losses(hidden, batch, self.backbone.model.get_output_embeddings())

    @torch.no_grad()
    def generate(self, prompts: EncodedPrompts, max_new_tokens: int, num_beams: int = 1, batch_size: int = 16,
                 bf16: bool = False, verbose: int = 0) -> list[list[int]]:
        """Token ids written after each prompt, without the end token: :func:`generate_after` with the tags
        spliced into the prompts."""
        self.eval()
        return generate_after(self.backbone.model, self.backbone.tokenizer, prompts, self.input_embeddings,
                              max_new_tokens, num_beams, batch_size, bf16, verbose)


def decode(tokenizer: PreTrainedTokenizerBase, sequences: Sequence[Sequence[int]]) -> list[str]:
    """Generated ids as text, without special tokens and surrounding white space."""
    return [text.strip() for text in tokenizer.batch_decode(sequences, skip_special_tokens=True)]
