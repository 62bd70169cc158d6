"""Exact frozen-prefix caching: compute the keys/values before the function tag once.

When the backbone and every tag but the function tag are frozen (stage-3 training, and all
prediction), every token of a prompt before its first function-tag vector has keys/values that never
change. :class:`PrefixCache` computes them once per fit; each step then runs only the function-tag
tokens against them (:meth:`PrefixCache.batch`), with the same result as the full forward pass.
Feature vectors (:mod:`chemtag.feature_tags`) train as well: a prefix ends at the first function-tag or
feature vector (:meth:`TaggedModel.recomputed_slots`), which a template places right before the function tag.

The prefix is cut into *pieces* whose keys/values are computed and stored once however many prompts
contain them:

- a piece ends at the latest where a span of the template ends: text and tags up to the end of a
  field's value (the text after the last field joins the last span). Without isolated segments each
  piece attends to the pieces before it, so prompts that begin alike share their leading pieces: a
  protein written before the drug is computed and stored once per distinct protein;
- with isolated segments, each domain segment is a piece that depends on its own text and positions
  only (see :meth:`TaggedModel.position_ids`), so a protein that appears in 100 pairs is computed and
  stored once; the first run of shared text is one piece for all prompts; each later run of shared
  text (e.g. ``". The SMILES of the drug is"``) attends to everything before it and is a piece per
  distinct preceding content.

For a model that pools its input fields (:attr:`TaggedModel.pooled_fields`), each piece also keeps the
sums of its tokens' hidden states per field (in each pooled layer), so a row's field means come from its
pieces too.

Keys/values stay in the backbone's device memory (host memory on a CPU, GPU memory on a GPU, where each
step then gathers its prefixes without a copy) up to a byte budget and go to a memory-mapped temporary
file beyond it.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from chemtag.model import Batch, FieldSums, TaggedModel, autocast, pad_rows
from chemtag.prefix_attention import PrefixKV
from chemtag.templates import EncodedPrompts

DEFAULT_MEMORY_BYTES = 2 * 2**30
_DISK_MARGIN_BYTES = 2 * 2**30
_PAGE_CACHE_SHARE = 0.75  # a spilled store up to this share of the physical memory is read from the page cache


def _physical_memory_bytes() -> int | None:
    """The machine's physical memory, where the system tells it (not on Windows)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


class PrefixCacheTooLarge(MemoryError):
    """The prefix keys/values fit neither the memory budget nor the free disk space."""


@dataclass(frozen=True)
class _Piece:
    """Tokens ``[begin, end)`` of prompt ``row``, stored from token ``offset`` of the store.

    A ``dependent`` piece attends to all tokens before ``begin``: the ``depth`` pieces before it.
    """

    row: int
    begin: int
    end: int
    dependent: bool
    depth: int
    offset: int

    @property
    def length(self) -> int:
        return self.end - self.begin

    @property
    def cost(self) -> int:
        """Tokens its computation attends over, to batch pieces of similar cost."""
        return self.end if self.dependent else self.length


class _KVStore:
    """Keys/values of ``n_tokens`` tokens, ``(n_layers, 2, kv_heads, n_tokens, head_dim)``: a tensor on
    ``device`` up to ``memory_bytes`` (if the device has the memory), else a memory-mapped anonymous
    temporary file in ``directory``.

    A file larger than three quarters of the physical memory cannot stay in the page cache, so a step
    reads its batch from disk. Such a file is laid out token-major, ``(n_tokens, n_layers, 2, kv_heads,
    head_dim)``: each cached piece is then one block of the file, read in one run, rather than
    ``n_layers * 2 * kv_heads`` scattered slices. In memory the layer-major layout gathers faster, since
    it needs no transpose (docs/prefix_cache.md, "A cache larger than the memory"). ``token_major``
    True / False sets the layout of a spilled store instead.
    """

    def __init__(self, n_tokens: int, layout: tuple[int, int, int], dtype: torch.dtype, memory_bytes: int,
                 directory: str | None = None, device: torch.device | str = "cpu",
                 token_major: bool | None = None):
        n_layers, kv_heads, head_dim = layout
        shape = (n_layers, 2, kv_heads, n_tokens, head_dim)
        self.nbytes = math.prod(shape) * dtype.itemsize
        self.on_disk = self.nbytes > memory_bytes
        self.token_major = False
        if not self.on_disk:
            try:
                self.data = torch.empty(shape, dtype=dtype, device=device)
                return
            except torch.cuda.OutOfMemoryError:  # a GPU short of memory: the file below instead
                self.on_disk = True
        directory = directory or tempfile.gettempdir()
        free = shutil.disk_usage(directory).free
        if self.nbytes + _DISK_MARGIN_BYTES > free:
            raise PrefixCacheTooLarge(
                f"The prefix cache needs {self.nbytes / 2**30:.1f} GiB, over the memory budget of "
                f"{memory_bytes / 2**30:.1f} GiB and the {free / 2**30:.1f} GiB free in {directory}."
            )
        if token_major is None:
            physical = _physical_memory_bytes()
            token_major = physical is not None and self.nbytes > _PAGE_CACHE_SHARE * physical
        self.token_major = token_major
        if self.token_major:
            shape = (n_tokens, n_layers, 2, kv_heads, head_dim)
        storage = np.uint16 if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype
        self._file = tempfile.TemporaryFile(prefix="chemtag-kv-", dir=directory)  # deleted when closed
        self._reserve(directory)
        array = torch.from_numpy(np.memmap(self._file, dtype=storage, mode="w+", shape=shape))
        self.data = array.view(dtype)

    def _reserve(self, directory: str) -> None:
        """Allocate the file's blocks now: a disk that other processes fill meanwhile then fails here,
        with :class:`PrefixCacheTooLarge`, rather than as a bus error when a page is first written."""
        if not hasattr(os, "posix_fallocate"):  # macOS and Windows: the file grows as it is written
            return
        try:
            os.posix_fallocate(self._file.fileno(), 0, self.nbytes)
        except OSError as error:
            self._file.close()
            if error.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            raise PrefixCacheTooLarge(
                f"The prefix cache could not reserve {self.nbytes / 2**30:.1f} GiB in {directory}: "
                f"{error.strerror}."
            ) from error

    def close(self) -> None:
        """Release the keys/values (and a spilled store's temporary file) now."""
        del self.data
        if self.on_disk:
            self._file.close()

    def write(self, offset: int, values: torch.Tensor) -> None:
        """Store ``values`` ``(n_layers, 2, kv_heads, n, head_dim)`` as tokens ``offset`` to ``offset + n``."""
        values = values.to(self.data.device, self.data.dtype)
        if self.token_major:
            self.data[offset:offset + values.shape[3]] = values.permute(3, 0, 1, 2, 4)
        else:
            self.data[:, :, :, offset:offset + values.shape[3]] = values

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Tokens ``index`` ``(B, L)``: ``(n_layers, 2, kv_heads, B, L, head_dim)``, where the store is."""
        flat = index.to(self.data.device).flatten()
        if self.token_major:
            tokens = self.data.index_select(0, flat)  # (B * L, n_layers, 2, kv_heads, head_dim)
            return tokens.permute(1, 2, 3, 0, 4).unflatten(3, index.shape).contiguous()
        return self.data.index_select(3, flat).unflatten(3, index.shape)

    def describe(self) -> str:
        """Size and place, e.g. ``'4,853 MB on disk'``, ``'706 MB in memory'``, ``'706 MB in cuda:0 memory'``."""
        place = ("on disk, token-major" if self.token_major else "on disk") if self.on_disk else \
            "in memory" if self.data.device.type == "cpu" else f"in {self.data.device} memory"
        return f"{self.nbytes / 2**20:,.0f} MB {place}"


class PrefixCache:
    """Keys/values of every prompt's frozen prefix, computed once.

    Creating the cache only plans it (which pieces, how many tokens); :meth:`compute` runs the
    backbone over each distinct piece once. The keys/values belong to the model's current frozen
    tags: compute a new cache after changing them.

    Parameters
    ----------
    model : the tagged model. Training through the cache needs every tag but the function tags
        frozen (:attr:`TaggedModel.prefix_is_frozen`).
    prompts : the encoded prompts; rows are addressed by their index in ``prompts``.
    """

    def __init__(self, model: TaggedModel, prompts: EncodedPrompts):
        self.model = model
        self.prompts = prompts
        self._prefix_lengths = np.array([_first(model.recomputed_slots(slots)) for slots in prompts.tag_slots])
        self._suffix_positions: list[np.ndarray] = []
        self._row_pieces: list[list[int]] = []
        self.pieces: list[_Piece] = []
        self._plan()
        self._store: _KVStore | None = None
        self._piece_fields: FieldSums | None = None

    # ----------------------------------------------------------------- planning
    def _plan(self) -> None:
        index: dict[tuple, int] = {}
        for row, prefix_length in enumerate(self._prefix_lengths):
            segments = torch.as_tensor(self.prompts.segments[row])
            positions = self.model.position_ids(segments[None])[0].numpy()
            self._suffix_positions.append(positions[prefix_length:])
            pieces: list[int] = []
            for begin, end, dependent in self._runs(row, prefix_length):
                key = (self._digest(row, positions, begin, end), tuple(pieces) if dependent else ())
                if key not in index:
                    index[key] = len(self.pieces)
                    offset = self.pieces[-1].offset + self.pieces[-1].length if self.pieces else 0
                    self.pieces.append(_Piece(row, begin, end, dependent, len(pieces), offset))
                pieces.append(index[key])
            self._row_pieces.append(pieces)

    def _runs(self, row: int, length: int) -> list[tuple[int, int, bool]]:
        """``(begin, end, dependent)`` spans of the first ``length`` tokens of prompt ``row``, each cached as a
        unit: cut where a domain segment begins or ends (with isolated segments) and where a template span
        ends (after each field's value). A span of shared context after the first attends to those before
        it (dependent); with isolated segments, a domain segment attends only to itself."""
        if not length:
            return []
        isolated, segments = self.model.isolate_segments, self.prompts.segments[row]
        labels = ([segments] if isolated else []) + ([self.prompts.spans[row]] if self.prompts.spans else [])
        cuts = sorted({int(i) + 1 for label in labels for i in np.flatnonzero(np.diff(label[:length]))})
        bounds = [0, *cuts, length]
        return [(b, e, b > 0 and (not isolated or segments[b] == 0)) for b, e in zip(bounds[:-1], bounds[1:])]

    def _digest(self, row: int, positions: np.ndarray, begin: int, end: int) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.prompts.input_ids[row], self.prompts.tag_slots[row], self.prompts.segments[row], positions):
            digest.update(np.ascontiguousarray(array[begin:end], dtype=np.int64).tobytes())
        return digest.digest()

    @property
    def cached_tokens(self) -> int:
        """Tokens whose keys/values the cache stores (each distinct piece once)."""
        return sum(piece.length for piece in self.pieces)

    @property
    def prefix_tokens(self) -> int:
        """Tokens of all prompts' prefixes, counted per prompt."""
        return int(self._prefix_lengths.sum())

    def _layout(self) -> tuple[int, int, int]:
        """Layers, key/value heads and head width of the backbone's attention."""
        config = self.model.backbone.model.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return config.num_hidden_layers, kv_heads, head_dim

    # ----------------------------------------------------------------- computing
    @torch.no_grad()
    def compute(self, batch_size: int = 16, bf16: bool = False, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                directory: str | None = None, verbose: int = 0) -> "PrefixCache":
        """Run the backbone over each distinct piece once and store its keys/values; returns self.

        ``bf16`` computes and stores in bfloat16 (use the same setting as the steps that read the
        cache). They are kept on the backbone's device; beyond ``memory_bytes`` (or the memory a GPU
        has free) they go to a memory-mapped file in ``directory``
        (the system's temporary folder by default); :class:`PrefixCacheTooLarge` if the disk is too full.
        """
        dtype = torch.bfloat16 if bf16 else self.model.backbone.dtype
        device, fields = self.model.backbone.device, self.model.pooled_fields
        self._store = _KVStore(self.cached_tokens, self._layout(), dtype, memory_bytes, directory, device)
        if fields:  # a last row of zeros stands for "no piece" when rows' pieces are gathered
            width = len(self.model.pooled_layers) * self.model.backbone.hidden_size
            self._piece_fields = FieldSums(torch.zeros(len(self.pieces) + 1, fields, width, device=device),
                                           torch.zeros(len(self.pieces) + 1, fields, device=device))
        progress = tqdm(total=self.cached_tokens, unit="tok", disable=verbose <= 0, leave=verbose > 1,
                        desc=f"caching prefix keys/values ({self.describe()})")
        # Standalone pieces first, then dependent ones by depth: a piece's context is stored before it.
        waves: dict[int, list[int]] = {}
        for i, piece in enumerate(self.pieces):
            waves.setdefault(piece.depth if piece.dependent else -1, []).append(i)
        try:
            with autocast(self.model.backbone.device, bf16), progress:
                for _, wave in sorted(waves.items()):
                    for chunk in _chunks(wave, batch_size, key=lambda i: self.pieces[i].cost):
                        self._compute_pieces(chunk)
                        progress.update(sum(self.pieces[i].length for i in chunk))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Release the keys/values (a spilled cache's temporary file too) now; :meth:`compute` again to reuse."""
        if self._store is not None:
            self._store.close()
            self._store = None
        self._piece_fields = None

    def _compute_pieces(self, indices: Sequence[int]) -> None:
        pieces = [self.pieces[i] for i in indices]
        prompts, device = self.prompts, self.model.backbone.device
        spans = [slice(piece.begin, piece.end) for piece in pieces]
        to = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        positions = [self.model.position_ids(torch.as_tensor(prompts.segments[p.row])[None])[0, s]
                     for p, s in zip(pieces, spans)]
        batch = Batch(
            to(pad_rows([prompts.input_ids[p.row][s] for p, s in zip(pieces, spans)], 0)),
            to(pad_rows([prompts.tag_slots[p.row][s] for p, s in zip(pieces, spans)], -1)),
            to(pad_rows([prompts.segments[p.row][s] for p, s in zip(pieces, spans)], 0)),
            to(pad_rows([np.ones(p.length, dtype=bool) for p in pieces], False, bool)),
            to(np.zeros(len(pieces), dtype=np.int64)),
            positions=to(pad_rows(positions, 0)),
            prefix=self._prefix([p.row for p in pieces], [p.depth for p in pieces]) if pieces[0].dependent else None,
        )
        if self._piece_fields is not None:
            _, kv, fields = self.model.pooled_states(batch, keep_kv=True)
            at = torch.as_tensor(indices, device=device)
            self._piece_fields.sums[at], self._piece_fields.counts[at] = fields.sums, fields.counts
        else:
            _, kv = self.model.hidden_states(batch, keep_kv=True)
        stacked = torch.stack([torch.stack(pair) for pair in kv])  # (n_layers, 2, B, kv_heads, L, head_dim)
        for i, piece in enumerate(pieces):
            self._store.write(piece.offset, stacked[:, :, i, :, :piece.length])

    # ----------------------------------------------------------------- reading
    def _prefix(self, rows: Sequence[int], n_pieces: Sequence[int]) -> PrefixKV:
        """Cached keys/values of the first ``n_pieces[i]`` pieces of prompt ``rows[i]``."""
        tokens = [
            np.concatenate([self.pieces[i].offset + np.arange(self.pieces[i].length)
                            for i in self._row_pieces[row][:n]] or [np.empty(0, dtype=np.int64)])
            for row, n in zip(rows, n_pieces)
        ]
        device = self.model.backbone.device
        return PrefixKV(
            self._store.gather(torch.as_tensor(pad_rows(tokens, 0))).to(device),
            torch.as_tensor(pad_rows([self.prompts.segments[r][:len(t)] for r, t in zip(rows, tokens)], 0),
                            device=device),
            torch.as_tensor(pad_rows([np.ones(len(t), dtype=bool) for t in tokens], False, bool), device=device),
        )

    def batch(self, rows: Sequence[int]) -> Batch:
        """The tokens after the prefixes of prompts ``rows``, continuing their cached keys/values."""
        if self._store is None:
            raise RuntimeError("Call compute() before reading from the prefix cache.")
        if torch.is_grad_enabled() and not self.model.prefix_is_frozen:
            raise RuntimeError("The prefix cache holds the domain tags as constants; it cannot train them.")
        rows = list(rows)
        starts = self._prefix_lengths[rows]
        suffixes = EncodedPrompts(
            [self.prompts.input_ids[r][s:] for r, s in zip(rows, starts)],
            [self.prompts.tag_slots[r][s:] for r, s in zip(rows, starts)],
            [self.prompts.segments[r][s:] for r, s in zip(rows, starts)],
            self.prompts.readout[rows] - starts,
        )
        device = self.model.backbone.device
        batch = Batch.collate(suffixes, range(len(rows)), self.model.backbone.tokenizer.pad_token_id, device)
        batch.positions = torch.as_tensor(pad_rows([self._suffix_positions[r] for r in rows], 0), device=device)
        batch.prefix = self._prefix(rows, [len(self._row_pieces[r]) for r in rows])
        if self._piece_fields is not None:
            pieces = torch.as_tensor(pad_rows([self._row_pieces[r] for r in rows], len(self.pieces)), device=device)
            batch.prefix_fields = FieldSums(self._piece_fields.sums[pieces].sum(dim=1),
                                            self._piece_fields.counts[pieces].sum(dim=1))
        return batch

    def describe(self) -> str:
        """What is cached, e.g. ``'30,056 prompts, 1,210 pieces, 220,814 tokens, 4,853 MB on disk'``."""
        text = f"{len(self.prompts):,} prompts, {len(self.pieces):,} pieces, {self.cached_tokens:,} tokens"
        if self._store is not None:
            text += f", {self._store.describe()}"
        return text


def _first(flags: np.ndarray) -> int:
    """Index of the first True in ``flags``."""
    hits = np.flatnonzero(flags)
    if not len(hits):
        raise ValueError("A prompt has no function tag; the prefix cache splits prompts at the function tag.")
    return int(hits[0])


def _chunks(items: list[int], size: int, key) -> list[list[int]]:
    """``items`` sorted by ``key`` and cut into chunks of ``size`` (little padding within a chunk)."""
    ordered = sorted(items, key=key)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]
