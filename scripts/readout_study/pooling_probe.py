"""Which pooling of the final hidden states holds the most signal? Ridge probes per pooling.

The estimator reads the final hidden state at its last function-tag vector. The hidden states of a
field's own tokens do not depend on the function tag (the model is causal), so their mean is a constant
feature of each row that a head could read beside the readout. This study takes, for a benchmark task's
seeded train/test subsample (the preset's template, shipped domain tags, untrained function tag,
float32, full passes), the readout and the mean final hidden state over each domain field's value
tokens, fits ridge probes (features standardised on the training rows, penalty by leave-one-out over
``ALPHAS``) on each pooling and on their concatenations, and prints the test metric beside the mean
predictor's.

    PYTHONPATH=. .venv/bin/python scripts/readout_study/pooling_probe.py --task qed --n-train 2500 --n-test 500
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from chemtag.training import predict
from preset_states import mean_predictor_mse, preset_states, ridge_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="qed")
    parser.add_argument("--n-train", type=int, default=2500)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-residues", type=int, default=64, help="protein crop; 0 keeps proteins whole")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    states = preset_states(args.task, args.n_train, args.n_test, args.seed, args.max_residues or None,
                           pool_fields=True)
    n_fields = states.model.pooled_fields  # the head's input: the readout, then each field's mean state
    started = time.perf_counter()
    features = predict(states.model, states.prompts, batch_size=16, prefix_cache=False, verbose=1).numpy()
    print(f"states of {len(features):,} prompts: {time.perf_counter() - started:.0f} s", flush=True)

    y, n_train, d = states.y, states.n_train, states.model.backbone.hidden_size
    mean_mse = mean_predictor_mse(y, n_train)
    print(f"{args.task}, {n_train:,} train / {len(y) - n_train:,} test, seed {args.seed}, "
          f"{n_fields} domain field(s); mean predictor MSE {mean_mse:.5g}")
    blocks = {"readout": features[:, :d]}
    for k in range(1, n_fields + 1):
        blocks[f"field {k} mean"] = features[:, k * d:(k + 1) * d]
    means = [name for name in blocks if name != "readout"]
    choices = [["readout"], means, ["readout", *means]] + ([[m] for m in means] if len(means) > 1 else [])
    print("| features | test MSE | / mean predictor's | penalty |\n|---|---|---|---|")
    for names in choices:
        mse, penalty = ridge_probe(np.concatenate([blocks[n] for n in names], axis=1), y, n_train)
        print(f"| {' + '.join(names)} | {mse:.5g} | {mse / mean_mse:.3f} | {penalty:.3g} |", flush=True)


if __name__ == "__main__":
    main()
