"""The tagged model: splice tag vectors into a frozen backbone's input and read one hidden state."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from chemtag.backbones import Backbone
from chemtag.feature_tags import FeatureTag
from chemtag.layer_states import capture_layer_states
from chemtag.prefix_attention import PrefixKV, enable_prefix_attention
from chemtag.tags import Tag
from chemtag.templates import EncodedPrompts

KeysValues = list[tuple[torch.Tensor, torch.Tensor]]


def pad_rows(rows: Sequence[np.ndarray], fill, dtype=np.int64) -> np.ndarray:
    """Ragged 1-D arrays right-padded with ``fill`` into one ``(len(rows), max length)`` array."""
    padded = np.full((len(rows), max((len(r) for r in rows), default=0)), fill, dtype=dtype)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = row
    return padded


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` (a model's weights' device), or nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


EARLY_LAYERS = "early"
"""The ``pool_layers`` preset that reads every layer of the first quarter of the backbone's depth (rounded
up) and the final state: layers 1-8 and 30 of the default backbone, 1-8 and 32 of a 32-layer 7B model."""

DEFAULT_POOL_LAYERS = EARLY_LAYERS
"""The hidden states whose field means the estimators' heads read (see docs/training.md; until
2026-11-28 ``(0.125, 0.5, 1.0)``: an eighth of the way up, halfway and the final one)."""


def pooled_layer_numbers(layers: Sequence[int | float] | str, num_layers: int) -> tuple[int, ...]:
    """Hidden-state numbers in ``1 .. num_layers`` (``num_layers``: the final state, after the last norm),
    sorted and without repeats, from :data:`EARLY_LAYERS` or from layer numbers (negative ones count from
    the end: -1 is the final state) and fractions of the depth in (0, 1] (rounded to the nearest layer, at
    least the first)."""
    if isinstance(layers, str):
        if layers != EARLY_LAYERS:
            raise ValueError(f"pool_layers: the only named set of layers is {EARLY_LAYERS!r}, got {layers!r}.")
        return tuple(sorted({*range(1, math.ceil(num_layers / 4) + 1), num_layers}))
    numbers = set()
    for layer in layers:
        if isinstance(layer, (float, np.floating)):
            if not 0 < layer <= 1:
                raise ValueError(f"pool_layers: a fraction of the depth must be in (0, 1], got {layer}.")
            numbers.add(max(1, round(float(layer) * num_layers)))
        elif layer == 0 or not -num_layers <= layer <= num_layers:
            raise ValueError(f"pool_layers: layer {layer} does not exist; the backbone has {num_layers} layers "
                             f"(1 .. {num_layers}, or -{num_layers} .. -1 from the end).")
        else:
            numbers.add(int(layer) if layer > 0 else num_layers + 1 + int(layer))
    return tuple(sorted(numbers))


@dataclass
class FieldSums:
    """Hidden states summed over the value tokens of each pooled domain field: ``sums`` ``(B, K, layers * d)``
    float32 (each pooled layer's ``d``-wide sum in turn) and the tokens summed ``counts`` ``(B, K)``, for
    ``K`` fields."""

    sums: torch.Tensor
    counts: torch.Tensor

    def __add__(self, other: "FieldSums") -> "FieldSums":
        return FieldSums(self.sums + other.sums, self.counts + other.counts)

    def means(self) -> torch.Tensor:
        """Each field's mean states ``(B, K, layers * d)``; zeros for a field without tokens."""
        return self.sums / self.counts.clamp(min=1).unsqueeze(-1)


@dataclass
class Batch:
    """Right-padded prompts as tensors: ``(B, L)`` ids, tag slots, segments, mask; ``(B,)`` readout.

    A batch may continue cached prompt prefixes: ``prefix`` holds their keys/values, the batch's tokens
    follow them (token ``j`` of row ``b`` is token ``prefix.lengths[b] + j`` of its prompt) and
    ``positions`` ``(B, L)`` gives their position ids, and ``prefix_fields`` the pooled fields' sums over
    the prefixes' tokens (for a model that pools fields). Without a prefix, positions follow
    :meth:`TaggedModel.position_ids`.
    """

    input_ids: torch.Tensor
    tag_slots: torch.Tensor
    segments: torch.Tensor
    attention_mask: torch.Tensor
    readout: torch.Tensor
    positions: torch.Tensor | None = None
    prefix: PrefixKV | None = None
    prefix_fields: FieldSums | None = None

    @classmethod
    def collate(cls, prompts: EncodedPrompts, indices: Sequence[int], pad_id: int, device) -> "Batch":
        to = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        mask = pad_rows([np.ones(len(prompts.input_ids[i]), dtype=bool) for i in indices], False, bool)
        return cls(
            to(pad_rows([prompts.input_ids[i] for i in indices], pad_id)),
            to(pad_rows([prompts.tag_slots[i] for i in indices], -1)),
            to(pad_rows([prompts.segments[i] for i in indices], 0)),
            to(mask), to(prompts.readout[list(indices)]),
        )


class TaggedModel(nn.Module):
    """A frozen backbone conditioned by tags, with a task head on the readout hidden state (and on the
    pooled states of the input fields).

    Only the tags in ``trainable``, the ``head`` and the feature tag's projection receive gradients. The
    backbone is held by reference, never registered as a submodule, so ``state_dict()`` holds tags,
    head and feature tag only.

    Parameters
    ----------
    backbone : the frozen causal LM.
    tags : tags in the order of the stacked tag table the encoder indexes into; all of one length.
    head : maps the ``(B, d)`` float32 readout state to predictions, e.g. ``nn.Linear(d, 1)``.
    trainable : names of the tags to train; the others are frozen buffers of the model.
    isolate_segments : each domain segment attends only to itself and takes its positions as if it
        followed the shared text before it directly (see :meth:`position_ids`), so that its hidden
        states depend on its own text only (Tag-LLM's regression layout).
    feature_tag : the feature vectors of the prompts' feature slots, of the tags' length; their rows
        follow the tag table's (see :class:`~chemtag.templates.EncodedPrompts`).
    pooled_fields : the head also reads, after the readout, the mean hidden states over the value tokens
        (tag vectors left out) of each of the first ``pooled_fields`` domain segments, one ``d``-wide mean
        per layer of ``pooled_layers``: its input is then ``(B, (1 + pooled_fields * layers) * d)``. A
        causal model computes those tokens before the function tag, so with frozen domain tags their
        states are constants of each prompt, computed once in the prefix cache.
    pooled_layers : the hidden states whose field means the head reads, numbered ``1 ..
        backbone.num_layers`` (the last: the final state, after the backbone's last norm); by default
        the final one.
    """

    def __init__(self, backbone: Backbone, tags: Sequence[Tag], head: nn.Module, trainable: Sequence[str],
                 isolate_segments: bool = False, feature_tag: FeatureTag | None = None, pooled_fields: int = 0,
                 pooled_layers: Sequence[int] = ()):
        super().__init__()
        lengths = {tag.length for tag in tags} | ({feature_tag.length} if feature_tag is not None else set())
        if len(lengths) != 1:
            raise ValueError(f"All tags of a model must have one length, got {sorted(lengths)}.")
        self.backbone = backbone
        self.tag_names = [tag.name for tag in tags]
        self.tag_kinds = {tag.name: tag.kind for tag in tags}
        self.tag_length = lengths.pop()
        self.tag_vectors = nn.ParameterDict({
            tag.name: nn.Parameter(tag.vectors.detach().float().to(backbone.device, copy=True),
                                   requires_grad=tag.name in trainable)
            for tag in tags
        })
        self.head = head
        self.isolate_segments = isolate_segments
        self.feature_tag = feature_tag
        self.pooled_fields = pooled_fields
        self.pooled_layers = pooled_layer_numbers(pooled_layers or (-1,), backbone.num_layers)

    @property
    def feature_ids(self) -> list[str]:
        """The entities with feature vectors, in the order of their rows after the tag table."""
        return self.feature_tag.ids if self.feature_tag is not None else []

    def export_tags(self) -> dict[str, Tag]:
        """Detached CPU copies of the current tags, in table order."""
        return {
            name: Tag(name, self.tag_kinds[name], self.tag_vectors[name].detach().cpu().clone())
            for name in self.tag_names
        }

    def tag_table(self) -> torch.Tensor:
        """All tag vectors stacked in encoder order: ``(n_tags * p, d)``."""
        return torch.cat([self.tag_vectors[name] for name in self.tag_names])

    def function_tag_rows(self) -> np.ndarray:
        """Rows of the stacked tag table that hold function tags."""
        return np.concatenate([
            i * self.tag_length + np.arange(self.tag_length)
            for i, name in enumerate(self.tag_names) if self.tag_kinds[name] == "function"
        ] or [np.empty(0, dtype=np.int64)])

    def recomputed_slots(self, tag_slots: np.ndarray) -> np.ndarray:
        """Which of a prompt's tag slots ``(L,)`` hold vectors that train while the prefix is frozen: function
        tags and feature vectors; ``(L,)`` bool. A prompt's prefix ends at the first of them."""
        return np.isin(tag_slots, self.function_tag_rows()) | (tag_slots >= len(self.tag_names) * self.tag_length)

    @property
    def prefix_is_frozen(self) -> bool:
        """Whether every tag other than the function tags is frozen, so a prompt's prefix is a constant."""
        return not any(self.tag_vectors[n].requires_grad for n in self.tag_names if self.tag_kinds[n] != "function")

    def input_embeddings(self, batch: Batch) -> torch.Tensor:
        """Vocabulary embeddings with tag rows and feature vectors spliced in: ``(B, L, d)``."""
        embeds = self.backbone.embed(batch.input_ids)
        table = self.tag_table().to(embeds.dtype)
        slots = batch.tag_slots
        is_tag = ((slots >= 0) & (slots < len(table))).unsqueeze(-1)
        embeds = torch.where(is_tag, table[slots.clamp(0, len(table) - 1)], embeds)
        return embeds if self.feature_tag is None else self.feature_tag.splice(embeds, slots - len(table))

    def position_ids(self, segments: torch.Tensor) -> torch.Tensor:
        """Position ids of whole prompts ``(B, L)`` from their segments ``(B, L)``.

        The token index; with isolated segments, a domain segment's tokens are numbered as if the
        other domain segments were removed from the prompt, so a segment's positions depend on the
        shared text before it and never on the length of another segment.
        """
        index = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
        if not self.isolate_segments:
            return index
        positions = index.clone()
        for segment in segments.unique().tolist():
            if segment:
                own_or_shared = (segments == 0) | (segments == segment)
                positions = torch.where(segments == segment, own_or_shared.cumsum(dim=1) - 1, positions)
        return positions

    def visible(self, query_index: torch.Tensor, query_segments: torch.Tensor, key_index: torch.Tensor,
                key_segments: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """Which keys each query sees, ``(B, Lq, Lk)`` bool, from prompt indices and segments.

        Causal over the prompt; with isolated segments, a domain-segment token sees only its segment.
        """
        allowed = (key_index[:, None, :] <= query_index[:, :, None]) & key_valid[:, None, :]
        if self.isolate_segments:
            query_segments = query_segments[:, :, None]
            allowed &= (query_segments == 0) | (query_segments == key_segments[:, None, :])
        return allowed

    def attention_mask(self, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
        """The 2-D padding mask, or with isolated segments a ``(B, 1, L, L)`` additive mask."""
        if not self.isolate_segments:
            return batch.attention_mask.long()
        length = batch.input_ids.shape[1]
        index = torch.arange(length, device=batch.input_ids.device).expand_as(batch.input_ids)
        allowed = self.visible(index, batch.segments, index, batch.segments, batch.attention_mask)
        allowed |= torch.eye(length, dtype=torch.bool, device=allowed.device)  # no empty rows at padding
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)

    def prefix_attention_mask(self, batch: Batch) -> torch.Tensor:
        """``(B, 1, L, Lc + L)`` bool: which cached prefix tokens and batch tokens each batch token sees."""
        prefix, length = batch.prefix, batch.input_ids.shape[1]
        cached = torch.arange(prefix.valid.shape[1], device=prefix.valid.device).expand_as(prefix.valid)
        index = prefix.lengths[:, None] + torch.arange(length, device=cached.device)
        allowed = self.visible(index, batch.segments, torch.cat([cached, index], dim=1),
                               torch.cat([prefix.segments, batch.segments], dim=1),
                               torch.cat([prefix.valid, batch.attention_mask], dim=1))
        allowed[:, :, cached.shape[1]:] |= torch.eye(length, dtype=torch.bool, device=allowed.device)
        return allowed.unsqueeze(1)

    def hidden_states(self, batch: Batch, keep_kv: bool = False) -> tuple[torch.Tensor, KeysValues | None]:
        """Final hidden states ``(B, L, d)`` of the batch's tokens; with ``keep_kv`` also their keys
        and values, one ``(B, kv_heads, L, head_dim)`` pair per layer."""
        outputs = self._backbone_outputs(batch, keep_kv)
        return outputs.last_hidden_state, self._keys_values(outputs, keep_kv)

    def pooled_states(self, batch: Batch, keep_kv: bool = False) -> tuple[torch.Tensor, KeysValues | None, FieldSums]:
        """:meth:`hidden_states`, and the pooled fields' sums over the batch's tokens of each hidden state
        in ``pooled_layers``."""
        final = self.backbone.num_layers
        earlier = [layer for layer in self.pooled_layers if layer < final]
        with capture_layer_states(self.backbone.model, earlier) as captured:
            outputs = self._backbone_outputs(batch, keep_kv)
        states = [captured[layer] for layer in earlier]
        if final in self.pooled_layers:
            states.append(outputs.last_hidden_state)  # after the backbone's last norm
        return outputs.last_hidden_state, self._keys_values(outputs, keep_kv), self.field_sums(states, batch)

    def _backbone_outputs(self, batch: Batch, keep_kv: bool):
        """The backbone's outputs over the batch."""
        embeds = self.input_embeddings(batch)
        positions = batch.positions if batch.positions is not None else self.position_ids(batch.segments)
        model = self.backbone.model
        options = dict(inputs_embeds=embeds, position_ids=positions, use_cache=keep_kv)
        if batch.prefix is None:
            return model.base_model(attention_mask=self.attention_mask(batch, embeds.dtype), **options)
        enable_prefix_attention(model)
        return model.base_model(attention_mask=self.prefix_attention_mask(batch), chemtag_prefix=batch.prefix,
                                **options)

    @staticmethod
    def _keys_values(outputs, keep_kv: bool) -> KeysValues | None:
        if not keep_kv:
            return None
        # transformers renamed the outputs' ``past_key_values`` to ``cache`` within its 5.x releases.
        cache = outputs.cache if hasattr(outputs, "cache") else outputs.past_key_values
        return [(layer.keys, layer.values) for layer in cache.layers]

    def field_sums(self, states: Sequence[torch.Tensor], batch: Batch) -> FieldSums:
        """Sums of each of ``states`` ``(B, L, d)``, hidden states of ``batch``'s tokens, over the value tokens
        of each pooled field (domain segments ``1 .. pooled_fields``, tag vectors and padding left out),
        side by side; float32, also under bfloat16 autocast."""
        segment = torch.arange(1, self.pooled_fields + 1, device=batch.segments.device)
        value = (batch.tag_slots < 0) & batch.attention_mask
        own = ((batch.segments.unsqueeze(-1) == segment) & value.unsqueeze(-1)).float()  # (B, L, K)
        with torch.autocast(device_type=own.device.type, enabled=False):
            sums = [torch.einsum("blk,bld->bkd", own, hidden.float()) for hidden in states]
            return FieldSums(torch.cat(sums, dim=-1), own.sum(dim=1))

    def readout_states(self, batch: Batch) -> torch.Tensor:
        """The head's input, float32: the final hidden state at each prompt's last function-tag vector
        ``(B, d)``, followed by the pooled fields' mean states, ``(B, (1 + pooled_fields * layers) * d)``."""
        if self.pooled_fields:
            hidden, _, fields = self.pooled_states(batch)
        else:
            (hidden, _), fields = self.hidden_states(batch), None
        rows = torch.arange(len(batch.readout), device=hidden.device)
        readout = hidden[rows, batch.readout].float()
        if fields is None:
            return readout
        if batch.prefix_fields is not None:
            fields = fields + batch.prefix_fields
        return torch.cat([readout, fields.means().flatten(1)], dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Head outputs ``(B, k)``; the head runs in float32 even under bfloat16 autocast (it is small and
        its inputs are standardised differences that bfloat16 would blur)."""
        readouts = self.readout_states(batch)
        with torch.autocast(device_type=readouts.device.type, enabled=False):
            return self.head(readouts)
