"""Do the template's wording and the tags' length change what a head can read? Ridge probes per prompt.

Tag-LLM's presets use one template per task and tags of 10 vectors. This study takes, for a benchmark
task's seeded train/test subsample, the states the estimator's head reads (the readout at the untrained
function tag and each domain field's mean state in the ``--pool-layers``; float32, full passes) under other wordings of
the task's template and other tag lengths, fits ridge probes (features standardised on the training
rows, penalty by leave-one-out over ``ALPHAS``) on the readout, the field means and both, and prints
their test MSE as a fraction of the mean predictor's. A tag length other than the shipped tags' (10)
starts the domain tags from Tag-LLM's initialisation, so that initialisation is also probed at length 10.

    PYTHONPATH=. .venv/bin/python scripts/readout_study/template_probe.py --task qed --n-train 2500 --n-test 500 \
        --pool-layers 0.125,0.5,1.0

Variants are named ``template`` (a wording from ``--templates``, ``preset`` for the task's own) and
``tag length / domain tags``; ``--templates`` takes a JSON file ``{name: template}``, by default the
wordings in :data:`QED_TEMPLATES` (which fit the ``qed`` task's ``Drug`` column).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from preset_states import head_inputs, mean_predictor_mse, preset_states, ridge_probe, study_parser

QED_TEMPLATES = {
    "plain": "<SMILES> {Drug} <QED>",
    "named property": ("Input: The SMILES of the molecule is <SMILES> {Drug}. "
                       "Output: The quantitative estimate of drug-likeness (QED, from 0 to 1) of this molecule is <QED>"),
    "chat": ("<|im_start|>user\nHow drug-like is the molecule with SMILES <SMILES> {Drug}? Give its QED."
             "<|im_end|>\n<|im_start|>assistant\nIts QED is <QED>"),
}
TAG_LENGTHS = (1, 5, 20)


def main() -> None:
    parser = study_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--templates", type=Path, help="JSON {name: template} (default: the QED wordings)")
    args = parser.parse_args()
    templates = json.loads(args.templates.read_text()) if args.templates else QED_TEMPLATES
    variants = {"preset (10 / shipped)": {}, "preset (10 / initialised)": {"domain_tags": None}}
    variants |= {f"preset ({length} / initialised)": {"tag_length": length} for length in TAG_LENGTHS}
    variants |= {f"{name} (10 / shipped)": {"template": template} for name, template in templates.items()}

    torch.set_num_threads(args.threads)
    print("| template (tag length / domain tags) | readout | field means | readout + field means |\n|---|---|---|---|")
    for name, options in variants.items():
        states = preset_states(args.task, args.n_train, args.n_test, args.seed, args.max_residues or None,
                               pool_fields=True, pool_layers=args.pool_layers, **options)
        features = head_inputs(states, batch_size=16, prefix_cache=False)
        y, n_train, d = states.y, states.n_train, states.model.backbone.hidden_size
        mean_mse = mean_predictor_mse(y, n_train)
        blocks = {"readout": features[:, :d], "fields": features[:, d:], "both": features}
        ratios = [ridge_probe(block, y, n_train)[0] / mean_mse for block in blocks.values()]
        print(f"| {name} | " + " | ".join(f"{ratio:.3f}" for ratio in ratios) + " |", flush=True)


if __name__ == "__main__":
    main()
