"""The tagged model: splice tag vectors into a frozen backbone's input and read one hidden state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from chemtag.backbones import Backbone
from chemtag.tags import Tag
from chemtag.templates import EncodedPrompts


@dataclass
class Batch:
    """Right-padded prompts as tensors: ``(B, L)`` ids, tag slots, segments, mask; ``(B,)`` readout."""

    input_ids: torch.Tensor
    tag_slots: torch.Tensor
    segments: torch.Tensor
    attention_mask: torch.Tensor
    readout: torch.Tensor

    @classmethod
    def collate(cls, prompts: EncodedPrompts, indices: Sequence[int], pad_id: int, device) -> "Batch":
        lengths = [len(prompts.input_ids[i]) for i in indices]
        width = max(lengths)
        shape = (len(indices), width)
        ids, slots, segments = np.full(shape, pad_id), np.full(shape, -1), np.zeros(shape, dtype=np.int64)
        mask = np.zeros(shape, dtype=bool)
        for row, (i, length) in enumerate(zip(indices, lengths)):
            ids[row, :length] = prompts.input_ids[i]
            slots[row, :length] = prompts.tag_slots[i]
            segments[row, :length] = prompts.segments[i]
            mask[row, :length] = True
        to = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        return cls(to(ids), to(slots), to(segments), to(mask), to(prompts.readout[list(indices)]))


class TaggedModel(nn.Module):
    """A frozen backbone conditioned by tags, with a task head on the readout hidden state.

    Only the tags in ``trainable`` and the ``head`` receive gradients. The backbone is held by
    reference, never registered as a submodule, so ``state_dict()`` holds tags and head only.

    Parameters
    ----------
    backbone : the frozen causal LM.
    tags : tags in the order of the stacked tag table the encoder indexes into; all of one length.
    head : maps the ``(B, d)`` float32 readout state to predictions, e.g. ``nn.Linear(d, 1)``.
    trainable : names of the tags to train; the others are frozen buffers of the model.
    isolate_segments : each domain segment attends only to itself (Tag-LLM's regression layout).
    """

    def __init__(self, backbone: Backbone, tags: Sequence[Tag], head: nn.Module, trainable: Sequence[str],
                 isolate_segments: bool = False):
        super().__init__()
        lengths = {tag.length for tag in tags}
        if len(lengths) != 1:
            raise ValueError(f"All tags of a model must have one length, got {sorted(lengths)}.")
        self.backbone = backbone
        self.tag_names = [tag.name for tag in tags]
        self.tag_kinds = {tag.name: tag.kind for tag in tags}
        self.tag_kinds = {tag.name: tag.kind for tag in tags}
        self.tag_length = lengths.pop()
        self.tag_vectors = nn.ParameterDict({
            tag.name: nn.Parameter(tag.vectors.detach().float().clone(), requires_grad=tag.name in trainable)
            for tag in tags
        })
        self.head = head
        self.isolate_segments = isolate_segments

    def export_tags(self) -> dict[str, Tag]:
        """Detached CPU copies of the current tags, in table order."""
        return {
            name: Tag(name, self.tag_kinds[name], self.tag_vectors[name].detach().cpu().clone())
            for name in self.tag_names
        }

    def export_tags(self) -> dict[str, Tag]:
        """Detached CPU copies of the current tags, in table order."""
        return {
            name: Tag(name, self.tag_kinds[name], self.tag_vectors[name].detach().cpu().clone())
            for name in self.tag_names
        }

    def tag_table(self) -> torch.Tensor:
        """All tag vectors stacked in encoder order: ``(n_tags * p, d)``."""
        return torch.cat([self.tag_vectors[name] for name in self.tag_names])

    def input_embeddings(self, batch: Batch) -> torch.Tensor:
        """Vocabulary embeddings with tag rows spliced in: ``(B, L, d)``."""
        embeds = self.backbone.embed(batch.input_ids)
        table = self.tag_table().to(embeds.dtype)
        is_tag = (batch.tag_slots >= 0).unsqueeze(-1)
        return torch.where(is_tag, table[batch.tag_slots.clamp_min(0)], embeds)

    def attention_mask(self, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
        """The 2-D padding mask, or with isolated segments a ``(B, 1, L, L)`` additive mask."""
        if not self.isolate_segments:
            return batch.attention_mask.long()
        length = batch.input_ids.shape[1]
        position = torch.arange(length, device=batch.input_ids.device)
        causal = position[:, None] >= position[None, :]
        query_segment, key_segment = batch.segments[:, :, None], batch.segments[:, None, :]
        visible = (query_segment == 0) | (query_segment == key_segment)
        allowed = causal & visible & batch.attention_mask[:, None, :]
        allowed |= torch.eye(length, dtype=torch.bool, device=allowed.device)  # no empty rows at padding
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)

    def readout_states(self, batch: Batch) -> torch.Tensor:
        """Final hidden state at each prompt's last function-tag vector: ``(B, d)`` float32."""
        embeds = self.input_embeddings(batch)
        outputs = self.backbone.model.base_model(
            inputs_embeds=embeds, attention_mask=self.attention_mask(batch, embeds.dtype), use_cache=False,
        )
        rows = torch.arange(len(batch.readout), device=embeds.device)
        return outputs.last_hidden_state[rows, batch.readout].float()

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.readout_states(batch))
