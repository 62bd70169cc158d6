"""Why chemtag is worse than the mean predictor on O'Neil (400 training / 200 test triples, fold 0, seed 0).

Computes the untrained <DC> readouts of the benchmark rows (both drug orders) once, then fits the
head's linear probe on them (squared error, as chemtag does, and Huber) with every penalty and reports,
per penalty: the 5-fold interleaved CV the head uses to choose, a CV grouped by unordered drug pair, the
training and the test loss, all in squared error of targets standardised by the training rows.
Readouts are cached in /tmp/exp/oneil/readouts.npz.

    PYTHONPATH=. .venv/bin/python scripts/readout_study/oneil_probe.py

The readouts are today's estimator's (its template and pooled layers); the table in
docs/benchmarks_suite.md measured the estimator of 2026-11-26.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupKFold

from benchmarks.runner import load_data
from benchmarks.tasks import TASKS, Rows
from chemtag import DrugComboRegressor
from chemtag.heads import LinearHead
from chemtag.training import predict
from preset_states import untrained_model

torch.set_num_threads(2)
data = load_data(TASKS["dc-oneil"], Rows(400, 200), fold=0, seed=0)
swap = lambda frame: frame.rename(columns={"Drug1": "Drug2", "Drug2": "Drug1"})[list(frame.columns)]
cache = Path("/tmp/exp/oneil/readouts.npz")
if not cache.exists():
    cache.parent.mkdir(parents=True, exist_ok=True)
    frames = {"train": data.X_train, "train_swapped": swap(data.X_train), "test": data.X_test,
              "test_swapped": swap(data.X_test)}
    # the readout alone, as measured; one model and one pass over the four frames' rows
    every_row = pd.concat(frames.values(), ignore_index=True)
    model, prompts = untrained_model(DrugComboRegressor(pool_fields=False), every_row)
    every_readout = predict(model, prompts, 16, bf16=False).numpy()
    ends = np.cumsum([len(frame) for frame in frames.values()])
    np.savez(cache, **dict(zip(frames, np.split(every_readout, ends[:-1]))))
R = dict(np.load(cache))
y_mean, y_std = data.y_train.mean(), data.y_train.std()
y = torch.tensor((data.y_train - y_mean) / y_std, dtype=torch.float32)
y_test = (data.y_test - y_mean) / y_std
pairs = ["|".join(sorted(p)) for p in zip(data.X_train.Drug1, data.X_train.Drug2)]
triples = pd.Series([p + "|" + c for p, c in zip(pairs, data.X_train.Cell_Line_ID)])
print(f"train: {len(set(pairs))} unordered pairs over 400 rows, {triples.duplicated().sum()} repeated triples; "
      f"test mean-predictor loss {np.mean(y_test ** 2):.3f}; |y| > 3 sd: train {(abs(y.numpy()) > 3).sum()}, "
      f"test {(abs(y_test) > 3).sum()}")
mse = lambda o, t: torch.nn.functional.mse_loss(o.squeeze(-1), t)


def fitted(features_rows, penalty, fit_loss):
    head = LinearHead(R["train"].shape[1], 1)
    readouts = torch.tensor(R["train"][features_rows])
    head.fit_standardisation(readouts)
    head._fit_linear(head.features(readouts), y[features_rows], fit_loss, penalty)
    return head


def squared_error(head, name, rows, targets):
    with torch.no_grad():
        return float(np.mean((head(torch.tensor(R[name][rows])).squeeze(-1).numpy() - targets) ** 2))


def cv(folds, fit_loss):
    """Held-out squared error per penalty over ``folds`` (pairs of row arrays)."""
    out = {}
    for penalty in PENALTIES:
        total = sum(squared_error(fitted(fit_rows, penalty, fit_loss), "train", held, y.numpy()[held]) * len(held)
                    for fit_rows, held in folds)
        out[penalty] = total / len(y)
    return out


PENALTIES = [1e4, 1e3, 1e2, 10.0, 1.0, 1e-1, 1e-2, 1e-3]
rows = np.arange(len(y))
INTERLEAVED = [(np.flatnonzero(rows % 5 != k), np.flatnonzero(rows % 5 == k)) for k in range(5)]
BY_PAIR = list(GroupKFold(5).split(R["train"], groups=pairs))
LOSSES = {"squared error (chemtag's)": mse,
          "Huber, delta 1 sd": lambda o, t: torch.nn.functional.huber_loss(o.squeeze(-1), t, delta=1.0)}
for loss_name, fit_loss in LOSSES.items():
    interleaved, grouped = cv(INTERLEAVED, fit_loss), cv(BY_PAIR, fit_loss)
    print(f"\nprobe fitted with {loss_name}; every column in squared error")
    print("| penalty | interleaved CV | CV by pair | train | test (as given) | test (both orders averaged) |")
    print("|---|---|---|---|---|---|")
    for penalty in PENALTIES:
        head = fitted(rows, penalty, fit_loss)
        with torch.no_grad():
            both = (head(torch.tensor(R["test"])) + head(torch.tensor(R["test_swapped"]))).squeeze(-1).numpy() / 2
        print(f"| {penalty:g} | {interleaved[penalty]:.3f} | {grouped[penalty]:.3f} | "
              f"{squared_error(head, 'train', rows, y.numpy()):.3f} | "
              f"{squared_error(head, 'test', np.arange(len(y_test)), y_test):.3f} | {np.mean((both - y_test) ** 2):.3f} |")
