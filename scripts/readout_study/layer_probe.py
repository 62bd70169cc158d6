"""Which layer's hidden states hold the most signal? Ridge probes per layer.

The estimator reads the *final* hidden state at its last function-tag vector (and, with
``pool_fields``, the final states' mean over each domain field's value tokens). This study takes the
hidden state of every layer at that position (untrained function tag, shipped domain tags, the
preset's template, bf16 through the prefix cache as a fit computes it) for a benchmark task's
seeded train/test subsample, fits a ridge probe per layer (features standardised on the training rows,
penalty by leave-one-out over ``ALPHAS``) and prints each layer's test MSE beside the mean predictor's.

    PYTHONPATH=. .venv/bin/python scripts/readout_study/layer_probe.py --task qed --n-train 2500 --n-test 500

``--fields`` also pools every layer's states over each domain field (float32, full passes, as in
``pooling_probe.py``) and probes, per layer, the field means and the readout beside them, then the
estimator's final-layer features joined with an earlier layer's field means, and every ``--stride``-th
layer's field means together; ``--sets 4,15,30 1,4,15,30`` also probes the final readout beside the field
means of each set of layers (what ``pool_layers`` gives the head). ``--kernel`` probes each set with
chemtag's kernel head too (:class:`~chemtag.kernel_head.KernelHead` on the linear head's standardisation,
as ``head="kernel"`` fits it, all choices by cross-validation on the training rows).
"""

from __future__ import annotations

import numpy as np
import torch

from chemtag.kernel_head import KernelHead
from preset_states import head_inputs, mean_predictor_mse, probe_head, ridge_probe, study_parser, study_states


def read_every_layer(model) -> None:
    """Make ``model.readout_states`` return, for every decoder layer, its output at each prompt's readout
    followed, where the model pools fields, by its outputs' mean over each pooled field's value tokens:
    ``(B, layers * (1 + fields) * d)``, the last layer's after the final norm (as the estimator reads it)."""
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
        blocks = []
        for hidden in outputs[:-1]:
            blocks.append(hidden[rows, batch.readout].float())
            if model.pooled_fields:
                blocks.append(model.field_sums([hidden], batch).means().flatten(1))
        return torch.cat(blocks + [final], dim=1)

    model.readout_states = readout_states


def kernel_probe(features: np.ndarray, y: np.ndarray, n_train: int, hidden_size: int) -> tuple[float, str]:
    """Test MSE and chosen kernel, width and penalty of chemtag's kernel head fitted on the first ``n_train``
    rows of ``features`` ``(n, blocks * hidden_size)`` (on a linear head fitted to them, as the estimator's
    probe is) and scored on the rest."""
    states, targets = torch.from_numpy(features).float(), torch.from_numpy(y).float()
    base = probe_head(features, y, n_train, hidden_size)
    head, _ = KernelHead.fit(base, states[:n_train], targets[:n_train], seed=0)
    with torch.no_grad():
        predicted = head(states[n_train:])[:, 0].double().numpy()
    return float(np.mean((predicted - y[n_train:]) ** 2)), f"{head.kernel} {head.width.item():g}, {head.penalty.item():g}"


def main() -> None:
    parser = study_parser(__doc__.split("\n\n")[0], max_residues=0)
    parser.add_argument("--fields", action="store_true", help="pool every layer's states over each domain field")
    parser.add_argument("--stride", type=int, default=4, help="with --fields: the layers probed together")
    parser.add_argument("--sets", nargs="*", default=[], help="with --fields: comma-separated layers to pool together")
    parser.add_argument("--kernel", action="store_true", help="with --sets: probe each set with the kernel head too")
    args = parser.parse_args()
    states = study_states(args, pool_fields=args.fields)
    read_every_layer(states.model)
    if args.fields:
        features = head_inputs(states, batch_size=16, prefix_cache=False)
    else:
        features = head_inputs(states, batch_size=32, bf16=True)

    y, n_train, d = states.y, states.n_train, states.model.backbone.hidden_size
    width = (1 + states.model.pooled_fields) * d  # one layer's block: its readout, then its field means
    layers, rest = divmod(features.shape[1], width)
    assert rest == 0 and layers == states.model.backbone.num_layers, "one block of states per layer"
    readout = {layer: features[:, (layer - 1) * width:(layer - 1) * width + d] for layer in range(1, layers + 1)}
    fields = {layer: features[:, (layer - 1) * width + d:layer * width] for layer in range(1, layers + 1)}
    mean_mse = mean_predictor_mse(y, n_train)
    print(f"{args.task}, {n_train:,} train / {len(y) - n_train:,} test, seed {args.seed}; "
          f"mean predictor MSE {mean_mse:.5g}")

    def row(name: str, *blocks: np.ndarray) -> None:
        mse, penalty = ridge_probe(np.concatenate(blocks, axis=1), y, n_train)
        print(f"| {name} | {mse:.5g} | {mse / mean_mse:.3f} | {penalty:.3g} |", flush=True)

    print("| layer: features | test MSE | / mean predictor's | penalty |\n|---|---|---|---|")
    for layer in range(1, layers + 1):  # 1: the first decoder layer's output
        row(f"{layer}: readout", readout[layer])
        if args.fields:
            row(f"{layer}: field means", fields[layer])
            row(f"{layer}: readout + field means", readout[layer], fields[layer])
    if args.fields:
        final = (readout[layers], fields[layers])
        for layer in range(args.stride, layers, args.stride):
            row(f"{layers}: readout + field means, + layer {layer}'s field means", *final, fields[layer])
        strided = list(range(args.stride, layers, args.stride)) + [layers]
        row(f"field means of layers {', '.join(map(str, strided))}", *(fields[layer] for layer in strided))
        row(f"{layers}: readout, + field means of layers {', '.join(map(str, strided))}", readout[layers],
            *(fields[layer] for layer in strided))
        for chosen in ([int(layer) for layer in spec.split(",")] for spec in args.sets):
            name = f"{layers}: readout, + field means of layers {', '.join(map(str, chosen))}"
            blocks = [readout[layers], *(fields[layer] for layer in chosen)]
            row(name, *blocks)
            if args.kernel:
                mse, choice = kernel_probe(np.concatenate(blocks, axis=1), y, n_train, d)
                print(f"| {name}, kernel head | {mse:.5g} | {mse / mean_mse:.3f} | {choice} |", flush=True)


if __name__ == "__main__":
    main()
