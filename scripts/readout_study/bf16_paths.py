"""The probe's loss on 200 demo SMILES through each path a readout can take, in float32 and under bf16.

The untrained ``QEDRegressor`` model (readout alone) computes the readouts of the rows through the prefix
cache in eval mode, the path a fit's probe is fitted on; the head's probe is fitted to them, and its
training loss (targets standardised) is then measured on readouts from the cache in training mode and from
whole prompts without the cache.

    PYTHONPATH=. .venv/bin/python scripts/readout_study/bf16_paths.py
"""
import numpy as np
import pandas as pd
import torch

from chemtag.datasets import demo_smiles
from chemtag.descriptors import qed
from chemtag.estimators import QEDRegressor
from chemtag.losses import squared_error
from chemtag.model import autocast
from chemtag.prefix_cache import PrefixCache
from chemtag.training import _batcher, _computed, _outputs
from chemtag.validation import canonical_smiles
from preset_states import probe_head, untrained_model

N_ROWS, BATCH_SIZE = 200, 16

torch.set_num_threads(2)
smiles = [s for s in demo_smiles() if canonical_smiles(s) and len(s) <= 80]
chosen = np.random.default_rng(0).permutation(len(smiles))[:N_ROWS]
table = pd.DataFrame({"Drug": [smiles[i] for i in chosen]})
labels = qed(table["Drug"])
y = (labels - labels.mean()) / labels.std(ddof=1)
targets = torch.tensor(y, dtype=torch.float32)
model, prompts = untrained_model(QEDRegressor(pool_fields=False), table)
rows = np.arange(N_ROWS)


def probe_loss(head, batcher, bf16: bool) -> float:
    """The head's squared error over every row, readouts from ``batcher`` in the model's current mode."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, N_ROWS, BATCH_SIZE):
            batch = rows[start:start + BATCH_SIZE]
            with autocast(model.backbone.device, bf16):
                readouts = model(batcher(batch)).float()
            total += squared_error(head(readouts), targets[batch]).item() * len(batch)
    return total / N_ROWS


for bf16 in (False, True):
    model.eval()
    cached = _batcher(model, prompts, _computed(PrefixCache(model, prompts), BATCH_SIZE, bf16, 2**30, 0))
    readouts = _outputs(model, cached, rows, prompts.lengths, BATCH_SIZE, bf16, readouts_only=True)
    head = probe_head(readouts.numpy(), y, N_ROWS, model.backbone.hidden_size)
    print(f"bf16={bf16}: probe loss, cached readouts in eval mode: {probe_loss(head, cached, bf16):.4f}")
    model.train()
    print(f"  cached readouts in training mode: {probe_loss(head, cached, bf16):.4f}")
    model.eval()
    print(f"  whole prompts without the cache: {probe_loss(head, _batcher(model, prompts, None), bf16):.4f}")
