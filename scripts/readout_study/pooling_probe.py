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
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from benchmarks.splits import subsample
from benchmarks.tasks import DATA_DIR, TASKS, crop_proteins
from chemtag.templates import Template
from chemtag.training import predict

ALPHAS = np.logspace(-2, 5, 15)


def read_field_means(model, fields: int) -> None:
    """Make ``model.readout_states`` return the readout followed by each domain segment's mean final
    hidden state over its value tokens (tag vectors left out): ``(B, (1 + fields) * d)``."""

    def readout_states(batch) -> torch.Tensor:
        hidden, _ = model.hidden_states(batch)
        hidden = hidden.float()
        rows = torch.arange(len(batch.readout), device=hidden.device)
        pooled = [hidden[rows, batch.readout]]
        for segment in range(1, fields + 1):
            own = ((batch.segments == segment) & (batch.tag_slots < 0) & batch.attention_mask).float()
            pooled.append((hidden * own[..., None]).sum(dim=1) / own.sum(dim=1, keepdim=True).clamp(min=1))
        return torch.cat(pooled, dim=1)

    model.readout_states = readout_states


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

    task = TASKS[args.task]
    frame = task.read(DATA_DIR)
    split = subsample(task.split(frame, 0, args.seed), args.n_train, args.n_test, args.seed)
    rows = np.concatenate([split.train, split.test])
    chosen = crop_proteins(frame.iloc[rows], task.columns("protein"), args.max_residues or None)
    X = chosen[list(task.inputs)].reset_index(drop=True)
    y = np.asarray(task.label(chosen), dtype=float)
    estimator = task.estimator(protein_alphabet="extended")
    fields = estimator._fields(X)
    estimator.fields_, estimator.template_ = fields, estimator.template
    backbone = estimator._backbone()
    template = Template.parse(estimator.template_)
    model = estimator._new_model(backbone, template, features=None)
    model.head = nn.Identity()
    prompts = estimator._encoder(template, model).encode({column: list(X[column]) for column in fields})
    n_segments = int(max(s.max() for s in prompts.segments))
    read_field_means(model, n_segments)
    started = time.perf_counter()
    features = predict(model, prompts, batch_size=16, prefix_cache=False, verbose=1).numpy()
    print(f"states of {len(X):,} prompts: {time.perf_counter() - started:.0f} s", flush=True)

    n_train, d = len(split.train), backbone.hidden_size
    train, test = slice(0, n_train), slice(n_train, None)
    mean_mse = np.mean((y[test] - y[train].mean()) ** 2)
    print(f"{args.task}, {n_train:,} train / {len(split.test):,} test, seed {args.seed}, "
          f"{n_segments} domain field(s); mean predictor MSE {mean_mse:.5g}")
    blocks = {"readout": features[:, :d]}
    for k in range(1, n_segments + 1):
        blocks[f"field {k} mean"] = features[:, k * d:(k + 1) * d]
    means = [name for name in blocks if name != "readout"]
    choices = [["readout"], means, ["readout", *means]] + ([[m] for m in means] if len(means) > 1 else [])
    print("| features | test MSE | / mean predictor's | penalty |\n|---|---|---|---|")
    for names in choices:
        chosen = np.concatenate([blocks[n] for n in names], axis=1)
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(chosen[train], y[train])
        mse = np.mean((probe.predict(chosen[test]) - y[test]) ** 2)
        print(f"| {' + '.join(names)} | {mse:.5g} | {mse / mean_mse:.3f} | {probe[-1].alpha_:.3g} |", flush=True)


if __name__ == "__main__":
    main()
