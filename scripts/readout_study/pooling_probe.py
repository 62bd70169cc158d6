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

import numpy as np

from preset_states import head_inputs, mean_predictor_mse, ridge_probe, study_parser, study_states


def main() -> None:
    args = study_parser(__doc__.split("\n\n")[0]).parse_args()
    states = study_states(args, pool_fields=True)
    n_fields = states.model.pooled_fields  # the head's input: the readout, then each field's mean state
    features = head_inputs(states, batch_size=16, prefix_cache=False)

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
