"""Train heads alone on the readouts saved by save_readouts.py; test MSE as a fraction of the mean predictor's."""
import numpy as np, torch, math
from torch import nn
from sklearn.linear_model import Ridge
d = np.load("/tmp/exp/qed_feats.npz"); H, y = torch.tensor(d["H"]), d["y"]
mu, sd = y[:800].mean(), y[:800].std()
t = torch.tensor((y-mu)/sd, dtype=torch.float32)
mean_mse = np.mean((y[:800].mean()-y[800:])**2)
ln = torch.nn.functional.layer_norm(H, (H.shape[1],))
r = Ridge(alpha=0.1).fit(ln[:800].numpy()/24, t[:800].numpy()); print("ridge coef abs max/ norm (z space)", np.abs(r.coef_).max(), np.linalg.norm(r.coef_))
def run(feat, lr, epochs, init=None, bs=16):
    torch.manual_seed(0); lin = nn.Linear(feat.shape[1], 1); nn.init.zeros_(lin.weight); nn.init.zeros_(lin.bias)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=0)
    for e in range(epochs):
        for b in torch.randperm(800).split(bs):
            loss = ((lin(feat[b]).squeeze(1)-t[b])**2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    p = lin(feat[800:]).squeeze(1).detach().numpy()*sd+mu
    return np.mean((p-y[800:])**2)/mean_mse
z = ln/math.sqrt(ln.shape[1])
stdz = (ln - ln[:800].mean(0))/ln[:800].std(0)/math.sqrt(ln.shape[1])
for lr in [1e-3, 3e-3, 1e-2, 3e-2]:
    print(f"lr {lr}: current z 10ep {run(z, lr, 10):.3f}  50ep {run(z, lr, 50):.3f} | standardized 10ep {run(stdz, lr, 10):.3f} 50ep {run(stdz,lr,50):.3f}")
