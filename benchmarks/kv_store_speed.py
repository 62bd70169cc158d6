"""Reading a spilled prefix cache: the layer-major store against the token-major one, gather by gather.

A training step gathers the cached prefixes of a random batch of prompts. The layer-major store,
``(n_layers, 2, kv_heads, n_tokens, head_dim)``, returns the batch in the layout attention reads, but one
prompt's prefix lies in ``n_layers * 2 * kv_heads`` places of the file; the token-major store,
``(n_tokens, n_layers, 2, kv_heads, head_dim)``, keeps each prefix in one block and transposes the batch
after reading it. Both stores are spilled to files and hold the same random pieces; each timed batch
reads the same prefixes from both, in alternating order. Prints the seconds per batch of each and their
ratio, and checks that both gather the same tensor.

Whether the reads come from disk depends on the page cache: run it under a memory limit smaller than
one store to measure a cache larger than the memory, e.g. in a cgroup (v1) limited to 4 GiB:

    mkdir /sys/fs/cgroup/memory/kv && echo 4G > /sys/fs/cgroup/memory/kv/memory.limit_in_bytes
    echo $$ > /sys/fs/cgroup/memory/kv/cgroup.procs
    .venv/bin/python -m benchmarks.kv_store_speed --gib 8 --batches 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from chemtag.prefix_cache import _KVStore


def memory_limit() -> str:
    """This process's cgroup (v1 or v2) memory limit, e.g. ``'4.0 GiB'``, or ``'none'`` (also off Linux)."""
    own_cgroups = Path("/proc/self/cgroup")
    v1_limits = [f"/sys/fs/cgroup/memory{line.split(':')[2]}/memory.limit_in_bytes"
                 for line in (own_cgroups.read_text().splitlines() if own_cgroups.is_file() else [])
                 if ":memory:" in line]
    for path in map(Path, ["/sys/fs/cgroup/memory.max", *v1_limits]):
        value = path.read_text().strip() if path.is_file() else ""
        if value.isdigit() and int(value) < 2**60:  # no limit: v2 writes "max", v1 a number near 2**63
            return f"{int(value) / 2**30:.1f} GiB"
    return "none"


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=4.0, help="size of each store")
    parser.add_argument("--piece-tokens", type=int, default=250,
                        help="tokens of each cached piece (a prompt's prefix)")
    parser.add_argument("--layout", default="30,3,64",
                        help="layers, key/value heads, head width (default: SmolLM2-135M)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    layout = tuple(int(part) for part in args.layout.split(","))
    token_bytes = layout[0] * 2 * layout[1] * layout[2] * 4
    n_pieces = max(int(args.gib * 2**30 / token_bytes) // args.piece_tokens, args.batch_size)
    n_tokens = n_pieces * args.piece_tokens
    stores = {"layer-major": _KVStore(n_tokens, layout, torch.float32, 0, token_major=False),
              "token-major": _KVStore(n_tokens, layout, torch.float32, 0, token_major=True)}
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    for piece in range(n_pieces):
        values = torch.randn(layout[0], 2, layout[1], args.piece_tokens, layout[2], generator=generator)
        for store in stores.values():
            store.write(piece * args.piece_tokens, values)
    print(f"2 stores of {n_pieces:,} pieces x {args.piece_tokens} tokens ({stores['layer-major'].describe()} each), "
          f"written in {time.perf_counter() - started:.0f} s; memory limit: {memory_limit()}", flush=True)

    rng = np.random.default_rng(0)
    seconds = {name: [] for name in stores}
    for batch in range(args.batches):
        pieces = rng.choice(n_pieces, args.batch_size, replace=False)
        index = torch.as_tensor(pieces[:, None] * args.piece_tokens + np.arange(args.piece_tokens))
        gathered = {}
        for name in list(stores) if batch % 2 == 0 else list(reversed(stores)):
            tick = time.perf_counter()
            gathered[name] = stores[name].gather(index)
            seconds[name].append(time.perf_counter() - tick)
        if not torch.equal(gathered["layer-major"], gathered["token-major"]):
            raise AssertionError("the two layouts gathered different keys/values")
    batch_mib = args.batch_size * args.piece_tokens * token_bytes / 2**20
    medians = {name: float(np.median(times)) for name, times in seconds.items()}
    for name, times in seconds.items():
        print(f"{name}: median {medians[name]:.3f} s a batch ({batch_mib / medians[name]:,.0f} MiB/s), "
              f"mean {np.mean(times):.3f} s over {args.batches} batches")
    print(f"token-major gathers a batch {medians['layer-major'] / medians['token-major']:.2f}x as fast as "
          "layer-major (medians); the gathered tensors are equal")
    for store in stores.values():
        store.close()
    return medians


if __name__ == "__main__":
    main()
