"""Which input's representation loses to the expert features? One learner, each mix of representations.

The kernel head falls behind LightGBM on Morgan fingerprints and protein composition once Davis has
thousands of training pairs. Is the head or the states to blame, and which input's states? This study fits
the ``gbm`` method's model (LightGBM, 1,000 rounds as in the full budget) on every mix of, for each input,
its expert features (Morgan counts for a molecule, amino-acid and dipeptide composition for a protein) or
the field means chemtag's head reads for it (the preset's template, shipped domain tags, bfloat16 through
the prefix cache, the layers of ``--pool-layers``), fitted on the training rows and scored on the test rows.

    PYTHONPATH=. .venv/bin/python scripts/readout_study/representation_swap.py --task ba-davis \
        --n-train 8000 --n-test 1000 --pool-layers early --threads 2 --states /tmp/davis-8000.npz
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.features import morgan_counts, protein_composition
from benchmarks.methods import gradient_boosting
from benchmarks.metrics import concordance_index
from benchmarks.runner import load_data
from benchmarks.tasks import BUDGETS, TASKS, Rows
from preset_states import mean_predictor_mse, saved_head_inputs, study_parser

EXPERT_FEATURES = {"molecule": morgan_counts, "protein": protein_composition}


def main() -> None:
    parser = study_parser(__doc__.split("\n\n")[0], max_residues=0)
    parser.add_argument("--states", type=Path, help="an .npz file that keeps the computed states")
    args = parser.parse_args()
    inputs = dict(TASKS[args.task].inputs)
    if set(inputs.values()) - set(EXPERT_FEATURES):
        parser.error(f"{args.task} has inputs other than molecules and proteins: {inputs}")
    torch.set_num_threads(args.threads)
    states = saved_head_inputs(args, args.states, batch_size=16, bf16=True)
    if states.fields != len(inputs):
        parser.error(f"the preset pools {states.fields} fields, the task has {len(inputs)} inputs")
    data = load_data(TASKS[args.task], Rows(args.n_train, args.n_test, args.max_residues or None), 0, args.seed)
    y, n_train = states.y, states.n_train
    if not np.allclose(np.concatenate([data.y_train, data.y_test]), y):
        raise ValueError("the saved states belong to other rows; remove --states' file or name another")
    expert = {column: EXPERT_FEATURES[kind](list(data.X_train[column]) + list(data.X_test[column]))
              for column, kind in inputs.items()}
    chemtag = {column: states.features[:, columns] for column, columns in zip(inputs, states.field_columns())}
    print(f"{args.task}, {n_train:,} train / {len(y) - n_train:,} test, seed {args.seed}; "
          f"mean predictor MSE {mean_predictor_mse(y, n_train):.4f}\n")
    print(f"| {' | '.join(inputs)} | features | test MSE | CI | fit |\n|{'---|' * (len(inputs) + 4)}")
    for sources in itertools.product(("expert", "chemtag"), repeat=len(inputs)):
        features = np.hstack([(expert if source == "expert" else chemtag)[column]
                              for column, source in zip(inputs, sources)])
        started = time.perf_counter()
        model = gradient_boosting(BUDGETS["full"].boosting_rounds, args.seed).fit(features[:n_train], y[:n_train])
        predicted = model.predict(features[n_train:])
        mse = float(np.mean((predicted - y[n_train:]) ** 2))
        print(f"| {' | '.join(sources)} | {features.shape[1]:,} | {mse:.4f} | "
              f"{concordance_index(y[n_train:], predicted):.3f} | {time.perf_counter() - started:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
