"""Spread of the saved readouts after layer normalisation, and RidgeCV probes on them (test MSE / mean predictor's)."""
import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler
d = np.load("/tmp/exp/qed_feats.npz"); H, y = d["H"], d["y"]
tr, te = slice(0,800), slice(800,1000)
print("H abs max per dim top:", np.sort(np.abs(H).max(0))[-8:])
print("H std per dim: min/median/max", np.percentile(H.std(0),[0,50,100]))
ln = (H - H.mean(1,keepdims=True))/H.std(1,keepdims=True)
print("LN std per-dim (across rows) median/max", np.percentile(ln.std(0),[50,99,100]), "LN mean abs median", np.median(np.abs(ln.mean(0))))
mean_mse = np.mean((y[tr].mean()-y[te])**2); print("mean mse", mean_mse)
for name, X in [("raw", H), ("ln", ln)]:
    r = RidgeCV(alphas=np.logspace(-3,4,15)).fit(X[tr], y[tr]); print(name, "ridge", np.mean((r.predict(X[te])-y[te])**2)/mean_mse, r.alpha_)
    s = StandardScaler().fit(X[tr]); r = RidgeCV(alphas=np.logspace(-3,4,15)).fit(s.transform(X[tr]), y[tr]); print(name, "std ridge", np.mean((r.predict(s.transform(X[te]))-y[te])**2)/mean_mse, r.alpha_)
