"""Probe loss of 200 demo SMILES through the cached (eval, train mode) and uncached paths, fp32 and bf16."""
import numpy as np, pandas as pd, torch
from chemtag.datasets import demo_smiles
from chemtag.descriptors import qed
from chemtag.validation import canonical_smiles
from chemtag.estimators import QEDRegressor
from chemtag.templates import Template
from chemtag.training import _batcher, _computed, _outputs
from chemtag.prefix_cache import PrefixCache
from chemtag.model import autocast
torch.set_num_threads(2)
smiles = [s for s in demo_smiles() if canonical_smiles(s) and len(s) <= 80]
rows = np.random.default_rng(0).permutation(len(smiles))[:200]
table = pd.DataFrame({"Drug": [smiles[i] for i in rows]}); table["QED"] = qed(table["Drug"])
est = QEDRegressor(pool_fields=False); est.fields_ = {"Drug": "SMILES"}; est.template_ = est.template
bb = est._backbone(); tpl = Template.parse(est.template_)
model = est._new_model(bb, tpl, None)
prompts = est._encoder(tpl, model).encode({"Drug": list(table.Drug)})
y = torch.tensor(((table.QED - table.QED.mean())/table.QED.std()).to_numpy(), dtype=torch.float32)
mse = lambda o, t: torch.nn.functional.mse_loss(o.squeeze(-1), t)
for bf16 in (False, True):
    cache = _computed(PrefixCache(model, prompts), 16, bf16, 2**30, 0)
    b = _batcher(model, prompts, cache)
    allrows = np.arange(200)
    R = _outputs(model, b, allrows, prompts.lengths, 16, bf16, readouts_only=True)
    model.head.initialise(R, y, mse)
    print("bf16", bf16, "probe loss (eval readouts):", mse(model.head(R), y).item())
    model.train()
    tot = 0
    for s in range(0, 200, 16):
        r = allrows[s:s+16]
        with autocast(model.backbone.device, bf16):
            out = model(b(r))
        tot += mse(out, y[r]).item()*len(r)
    print("  train-mode cached forward loss:", tot/200)
    nob = _batcher(model, prompts, None)
    tot = 0
    with torch.no_grad():
        for s in range(0, 200, 16):
            r = allrows[s:s+16]
            with autocast(model.backbone.device, bf16):
                out = model(nob(r))
            tot += mse(out, y[r]).item()*len(r)
    print("  uncached forward loss:", tot/200)
    model.eval()
