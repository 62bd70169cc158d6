"""Save the <QED> readouts of 1,000 demo SMILES (default backbone, untrained tag) to /tmp/exp/qed_feats.npz."""
import numpy as np, pandas as pd, torch, time
from torch import nn
from chemtag.datasets import demo_smiles
from chemtag.descriptors import qed
from chemtag.validation import canonical_smiles
from chemtag.estimators import QEDRegressor
from chemtag.templates import Template
from chemtag.training import predict
torch.set_num_threads(1)
smiles = [s for s in demo_smiles() if canonical_smiles(s) and len(s) <= 80]
rows = np.random.default_rng(0).permutation(len(smiles))[:1000]
table = pd.DataFrame({"Drug": [smiles[i] for i in rows]}); table["QED"] = qed(table["Drug"])
est = QEDRegressor(pool_fields=False); est.fields_ = {"Drug": "SMILES"}; est.template_ = est.template
bb = est._backbone(); tpl = Template.parse(est.template_)
model = est._new_model(bb, tpl, None); model.head = nn.Identity()
prompts = est._encoder(tpl, model).encode({"Drug": list(table.Drug)})
t=time.time(); H = predict(model, prompts, 32, bf16=True).numpy(); print("feat s", time.time()-t)
import os; os.makedirs("/tmp/exp", exist_ok=True); np.savez("/tmp/exp/qed_feats.npz", H=H, y=table.QED.to_numpy())
