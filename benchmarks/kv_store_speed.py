"""Reading the prefix cache's keys/values: chemtag's layer-major store against a token-major candidate.

A training step gathers the cached prefixes of a random batch of prompts. chemtag's store keeps
``(n_layers, 2, kv_heads, n_tokens, head_dim)``, so the gathered batch comes out in the layout attention
reads, but one prompt's prefix lies in ``n_layers * 2 * kv_heads`` places. A token-major store,
``(n_tokens, n_layers, 2, kv_heads, head_dim)``, keeps each prefix in one block and transposes the batch
after reading it. Both stores hold the same random pieces, spilled to a file (``--memory-gib 0``, the
default) or in memory; each timed batch reads both, in alternating order, after the kernel has been told
to drop the files' pages (``posix_fadvise``; ``--warm`` leaves them in the page cache). Prints the seconds
per batch of each and their ratio, and checks that both return the same tensor.

    .venv/bin/python -m benchmarks.kv_store_speed --gib 2 --batches 10
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from chemtag.prefix_cache import _KVStore


class TokenMajorStore(_KVStore):
    """The candidate: :class:`_KVStore`'s interface over ``(n_tokens, n_layers, 2, kv_heads, head_dim)``."""

    def __init__(self, n_tokens: int, layout: tuple[int, int, int], dtype: torch.dtype, memory_bytes: int):
        super().__init__(n_tokens, layout, dtype, memory_bytes)
        n_layers, kv_heads, head_dim = layout
        self.data = self.data.view(n_tokens, n_layers, 2, kv_heads, head_dim)

    def write(self, offset: int, values: torch.Tensor) -> None:
        tokens = values.permute(3, 0, 1, 2, 4)
        self.data[offset:offset + len(tokens)] = tokens

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        tokens = self.data.index_select(0, index.flatten()).unflatten(0, index.shape)
        return tokens.permute(2, 3, 4, 0, 1, 5).contiguous()


def drop_pages(store: _KVStore) -> None:
    """Write a spilled store's pages back and drop them from the page cache (no-op in memory)."""
    if store.on_disk:
        os.fsync(store._file.fileno())
        os.posix_fadvise(store._file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=4.0, help="size of each store")
    parser.add_argument("--piece-tokens", type=int, default=250, help="tokens of each cached piece (a prompt's prefix)")
    parser.add_argument("--layout", default="30,3,64", help="layers, key/value heads, head width (default: SmolLM2-135M)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--memory-gib", type=float, default=0.0, help="memory budget: 0 spills both stores to disk")
    parser.add_argument("--warm", action="store_true",
                        help="leave the files' pages in the page cache (a spilled store smaller than the free memory)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    layout = tuple(int(part) for part in args.layout.split(","))
    token_bytes = layout[0] * 2 * layout[1] * layout[2] * 4
    n_pieces = int(args.gib * 2**30 / token_bytes) // args.piece_tokens
    n_tokens = n_pieces * args.piece_tokens
    budget = int(args.memory_gib * 2**30)
    stores = {"layer-major (chemtag)": _KVStore(n_tokens, layout, torch.float32, budget),
              "token-major": TokenMajorStore(n_tokens, layout, torch.float32, budget)}
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    for piece in range(n_pieces):
        values = torch.randn(layout[0], 2, layout[1], args.piece_tokens, layout[2], generator=generator)
        for store in stores.values():
            store.write(piece * args.piece_tokens, values)
    for store in stores.values():
        if not args.warm:
            drop_pages(store)
    print(f"{len(stores)} stores of {n_pieces:,} pieces x {args.piece_tokens} tokens "
          f"({n_tokens * token_bytes / 2**30:.1f} GiB each, {next(iter(stores.values())).describe()}), "
          f"written in {time.perf_counter() - started:.0f} s")

    rng = np.random.default_rng(0)
    seconds = {name: [] for name in stores}
    for batch in range(args.batches):
        pieces = rng.choice(n_pieces, args.batch_size, replace=False)
        index = torch.as_tensor(pieces[:, None] * args.piece_tokens + np.arange(args.piece_tokens))
        gathered = {}
        names = list(stores) if batch % 2 == 0 else list(reversed(stores))
        for name in names:
            if not args.warm:
                drop_pages(stores[name])
            tick = time.perf_counter()
            gathered[name] = stores[name].gather(index).contiguous()
            seconds[name].append(time.perf_counter() - tick)
        first, second = gathered.values()
        if not torch.equal(first, second):
            raise AssertionError("the two layouts gathered different keys/values")
    batch_bytes = args.batch_size * args.piece_tokens * token_bytes
    for name, times in seconds.items():
        median = float(np.median(times))
        print(f"{name}: median {median:.3f} s a batch ({batch_bytes / 2**20 / median:,.0f} MiB/s), "
              f"mean {np.mean(times):.3f} s over {args.batches} batches")
    ratio = np.median(seconds["layer-major (chemtag)"]) / np.median(seconds["token-major"])
    print(f"token-major reads a batch {ratio:.2f}x as fast as chemtag's store (medians); gathered tensors equal")
    for store in stores.values():
        store.close()


if __name__ == "__main__":
    main()
