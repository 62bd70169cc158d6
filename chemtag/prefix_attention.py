"""Attention of a few new tokens over the cached keys/values of a frozen prefix.

Registered with transformers as the attention implementation :data:`ATTENTION_NAME` and switched on
for good by :func:`enable_prefix_attention` (without a prefix it is SDPA). The prefix enters as a constant: the backward
pass computes no gradient for its keys/values (and zero-fills no buffer of their size), and the heads
of a grouped-query model share the prefix keys without repeating them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTENTION_NAME = "chemtag_prefix"
_UNSUPPORTED = ("sliding_window", "softcap", "s_aux")
_SWITCH = threading.Lock()


@dataclass
class PrefixKV:
    """Cached keys/values of a right-padded batch of prompt prefixes.

    ``kv`` ``(n_layers, 2, kv_heads, B, Lc, head_dim)``: key (0) and value (1) of each prefix token in
    each layer, laid out so that each layer's keys are contiguous per head; ``segments`` ``(B, Lc)``
    their segment numbers; ``valid`` ``(B, Lc)`` False at padding. Token ``j`` of a row is token ``j``
    of its prompt.
    """

    kv: torch.Tensor
    segments: torch.Tensor
    valid: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Prefix length of each row: ``(B,)``."""
        return self.valid.sum(dim=1)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer ``index``, each ``(kv_heads, B, Lc, head_dim)``."""
        return self.kv[index, 0], self.kv[index, 1]


def attend_with_prefix(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       chemtag_prefix: PrefixKV | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Softmax attention of ``query`` over the prefix's and the new tokens' keys.

    ``query`` ``(B, heads, Lq, head_dim)``; ``key``/``value`` ``(B, kv_heads, Lq, head_dim)`` of the
    new tokens; ``attention_mask`` ``(B, 1, Lq, Lc + Lq)`` bool, True where a query sees a key (prefix
    keys first). Returns ``(B, Lq, heads, head_dim)``. Without a prefix this is transformers' SDPA.
    """
    if chemtag_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    unsupported = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
    if unsupported or dropout:
        raise NotImplementedError(f"The prefix cache does not support attention with {unsupported or ['dropout']}.")
    prefix_keys, prefix_values = chemtag_prefix.layer(module.layer_idx)
    dtype = prefix_keys.dtype  # the new tokens are few: convert them, never the cache
    batch, heads, length, head_dim = query.shape
    kv_heads = key.shape[1]
    scaling = head_dim**-0.5 if scaling is None else scaling
    # Heads first, then batch, like the cached keys; query heads sharing a key/value head become extra
    # query rows of that head: (kv_heads, B, groups * Lq, head_dim).
    grouped = query.reshape(batch, kv_heads, heads // kv_heads * length, head_dim).transpose(0, 1) * scaling
    grouped, key, value = grouped.to(dtype), key.transpose(0, 1).to(dtype), value.transpose(0, 1).to(dtype)
    scores = torch.cat([grouped @ prefix_keys.transpose(-1, -2), grouped @ key.transpose(-1, -2)], dim=-1)
    scores = scores.view(kv_heads, batch, heads // kv_heads, length, -1)
    scores = torch.where(attention_mask.transpose(0, 1)[:, :, None], scores, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    to_prefix, to_new = weights.to(value.dtype).flatten(2, 3).split([prefix_keys.shape[2], length], dim=-1)
    output = to_prefix @ prefix_values + to_new @ value  # (kv_heads, B, groups * Lq, head_dim)
    output = output.transpose(0, 1).reshape(batch, heads, length, head_dim).transpose(1, 2)
    return output.to(query.dtype).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, attend_with_prefix)
# Calls without a prefix (full passes once the switch is on) get SDPA's masks too.
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def enable_prefix_attention(model: PreTrainedModel) -> None:
    """Route ``model``'s attention through :func:`attend_with_prefix` from now on.

    The switch is permanent and idempotent: calls without a prefix still run transformers' SDPA, so a
    backbone shared by several threads never sees the implementation change under a running forward.
    """
    with _SWITCH:
        if model.config._attn_implementation != ATTENTION_NAME:
            model.config._attn_implementation = ATTENTION_NAME
