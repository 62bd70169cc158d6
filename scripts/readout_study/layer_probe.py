"""Which layer's hidden state at the function-tag readout holds the most signal? Ridge probes per layer.

The estimator reads the *final* hidden state at its last function-tag vector. This study takes the
hidden state of every layer at that position (untrained function tag, shipped domain tags, the
preset's template, bf16 through the prefix cache as a fit computes it) for a benchmark task's
seeded train/test subsample, fits a ridge probe per layer (features standardised on the training rows,
penalty by leave-one-out over ``ALPHAS``) and prints each layer's test MSE beside the mean predictor's.

    PYTHONPATH=. .venv/bin/python scripts/readout_study/layer_probe.py --task qed --n-train 2500 --n-test 500
"""

from __future__ import annotations

import torch

from preset_states import head_inputs, mean_predictor_mse, ridge_probe, study_parser, study_states


def read_every_layer(model) -> None:
    """Make ``model.readout_states`` return every decoder layer's output at each prompt's readout,
    ``(B, layers * d)``, the last layer's after the final norm (as the estimator reads it)."""
    outputs: list[torch.Tensor] = []
    reading = [False]  # the prefix cache's passes run the same layers: keep only the readout pass's outputs

    def keep(module, args, output) -> None:
        if reading[0]:
            outputs.append(output[0] if isinstance(output, tuple) else output)

    for layer in model.backbone.model.base_model.layers:
        layer.register_forward_hook(keep)
    final_readout = model.readout_states

    def readout_states(batch) -> torch.Tensor:
        outputs.clear()
        reading[0] = True
        try:
            final = final_readout(batch)
        finally:
            reading[0] = False
        rows = torch.arange(len(batch.readout), device=final.device)
        return torch.cat([hidden[rows, batch.readout].float() for hidden in outputs[:-1]] + [final], dim=1)

    model.readout_states = readout_states


def main() -> None:
    args = study_parser(__doc__.split("\n\n")[0], max_residues=0).parse_args()
    states = study_states(args, pool_fields=False)
    read_every_layer(states.model)
    features = head_inputs(states, batch_size=32, bf16=True)

    y, n_train, d = states.y, states.n_train, states.model.backbone.hidden_size
    mean_mse = mean_predictor_mse(y, n_train)
    print(f"{args.task}, {n_train:,} train / {len(y) - n_train:,} test, seed {args.seed}; "
          f"mean predictor MSE {mean_mse:.5g}")
    print("| layer | test MSE | / mean predictor's | penalty |\n|---|---|---|---|")
    for layer in range(1, features.shape[1] // d + 1):  # 1: the first decoder layer's output
        mse, penalty = ridge_probe(features[:, (layer - 1) * d:layer * d], y, n_train)
        print(f"| {layer} | {mse:.5g} | {mse / mean_mse:.3f} | {penalty:.3g} |", flush=True)


if __name__ == "__main__":
    main()
