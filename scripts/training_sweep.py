"""Fit ``QEDRegressor`` on the demo's data at several learning rates; print held-out errors per epoch.

    python scripts/training_sweep.py --lr 0 1e-4 3e-5 --max-epochs 8 [--bf16]

``--lr 0`` leaves tags and head where epoch 0 put them: the linear probe alone. Each line gives the
test MSE as a fraction of the mean predictor's and every epoch's ``train/validation`` loss.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from chemtag.datasets import demo_smiles
from chemtag.descriptors import qed
from chemtag.estimators import QEDRegressor
from chemtag.validation import canonical_smiles


def demo_table(n_rows: int, seed: int) -> pd.DataFrame:
    """The demo's SMILES (valid, at most 80 characters) in a seeded order, with QED labels."""
    smiles = [s for s in demo_smiles() if canonical_smiles(s) and len(s) <= 80]
    rows = np.random.default_rng(seed).permutation(len(smiles))[:n_rows]
    table = pd.DataFrame({"Drug": [smiles[i] for i in rows]})
    table["QED"] = qed(table["Drug"])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, nargs="+", required=True)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = demo_table(args.n_train + args.n_test, args.seed)
    train, test = table.iloc[:args.n_train], table.iloc[args.n_train:]
    mean_mse = float(np.mean((train["QED"].mean() - test["QED"]) ** 2))
    for lr in args.lr:
        started = time.perf_counter()
        model = QEDRegressor(lr=lr, max_epochs=args.max_epochs, bf16=args.bf16, random_state=args.seed, verbose=0,
                             pool_fields=False)
        model.fit(train[["Drug"]], train["QED"])
        ratio = float(np.mean((model.predict(test[["Drug"]]) - test["QED"]) ** 2)) / mean_mse
        epochs = " ".join(f"{r['epoch']}:{r['train_loss']:.3f}/{r.get('valid_loss', float('nan')):.3f}"
                          for r in model.history_)
        print(f"lr {lr:g} bf16 {args.bf16}: test MSE / mean predictor's {ratio:.3f}, "
              f"{time.perf_counter() - started:.0f} s; epochs {epochs}", flush=True)


if __name__ == "__main__":
    main()
