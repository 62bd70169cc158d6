"""Do the tag epochs lose to the probe because of the head or because of the tag? Three treatments.

A fit starts from a linear probe (epoch 0) and then trains function tag and head together with AdamW;
on QED, Davis and O'Neil the epochs after the probe rarely beat it on validation rows. This study
fits ``QEDRegressor`` on a seeded qed subsample with the training loop's head treatment replaced:

- ``default``: the estimator as shipped (tag and head train together);
- ``frozen-head``: the head stays the probe; only the tag trains;
- ``refit``: the head stays fixed during each epoch and is fitted again, as the probe is, to the
  readouts of the moved tag after it (each epoch's losses are those of the refitted head).

The ``refit`` treatment is what the estimators' ``head_training="refit"`` ships; this script also prints
each epoch's losses with the head the epoch's tag steps ran against, before the refit. The head reads
the function tag's state alone (``pool_fields=False``), as when the study was measured. It wraps three
private steps of :mod:`chemtag.training`, so it follows that module's internals.

    PYTHONPATH=. .venv/bin/python scripts/readout_study/head_refit.py --variant refit --n-train 600
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import chemtag.training as training
from benchmarks.runner import load_data
from benchmarks.tasks import DATA_DIR, TASKS, Rows
from chemtag import QEDRegressor

_initialise_head, _epoch = training._initialise_head, training._epoch


def _probe_then_freeze(model, *args, **kwargs) -> dict:
    record = _initialise_head(model, *args, **kwargs)
    model.head.requires_grad_(False)
    return record


def _epoch_then_refit(model, optimizer, batcher, targets, lengths, train_rows, valid_rows, loss_fn, config,
                      processes, rng, epoch) -> dict:
    during = _epoch(model, optimizer, batcher, targets, lengths, train_rows, valid_rows, loss_fn, config,
                    processes, rng, epoch)
    model.head.requires_grad_(True)  # the probe's own fit needs the gradient
    refit = training._refit_head(model, batcher, train_rows, valid_rows, lengths, targets, loss_fn, config,
                                 processes, None)
    model.head.requires_grad_(False)
    print(f"epoch {epoch}: train / valid loss {during['train_loss']:.4f} / {during['valid_loss']:.4f} with the "
          f"epoch's head, {refit['train_loss']:.4f} / {refit['valid_loss']:.4f} refitted", flush=True)
    return {"train_loss": refit["train_loss"], "valid_loss": refit["valid_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=["default", "frozen-head", "refit"], default="refit")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=500)
    arguments = parser.parse_args()
    if arguments.variant != "default":
        training._initialise_head = _probe_then_freeze
    if arguments.variant == "refit":
        training._epoch = _epoch_then_refit
    data = load_data(TASKS["qed"], Rows(arguments.n_train, arguments.n_test), 0, 0, DATA_DIR)
    started = time.perf_counter()
    model = QEDRegressor(max_epochs=arguments.epochs, lr=arguments.lr, patience=arguments.epochs, verbose=1,
                         random_state=0, pool_fields=False).fit(data.X_train, data.y_train)
    mse = float(np.mean((model.predict(data.X_test) - data.y_test) ** 2))
    baseline = float(np.mean((data.y_test - data.y_train.mean()) ** 2))
    print(f"{arguments.variant}, lr {arguments.lr}: test MSE {mse:.5f} (mean predictor {baseline:.5f}) in "
          f"{time.perf_counter() - started:.0f}s; train / valid loss by epoch: "
          + "; ".join(f"{h['epoch']}: {h['train_loss']:.4f} / {h.get('valid_loss', float('nan')):.4f}"
                      for h in model.history_))


if __name__ == "__main__":
    main()
