"""A short training run on the built-in shapes must learn structure, not just pixel marginals.

The reference is exact and needs no tuning: the best model that ignores z is a product of
independent per-pixel Bernoullis with p_d = the training mean of pixel d.  Its held-out
cross-entropy -sum_d [x log p_d + (1-x) log(1-p_d)] is computed in closed form.  A VAE whose
held-out ELBO (a lower bound on its log-likelihood) beats that has learned dependencies between
pixels through its latent code; one that is merely fitting marginals cannot beat it.
"""
import numpy as np

from minivae.backend import make_rng
from minivae.data import load_dataset
from minivae.model import VAE
from minivae.train import TrainConfig, Trainer
from minivae.evaluation import evaluate


def _marginal_baseline_nll(train, test):
    p = np.clip(train.mean(axis=0, dtype=np.float64), 1e-6, 1 - 1e-6)
    t = test.astype(np.float64)
    return float(-(t * np.log(p) + (1 - t) * np.log1p(-p)).sum(axis=1).mean())


def test_short_run_beats_the_pixel_marginal_model(tmp_path):
    data = load_dataset("shapes", binarize="none")
    data.train = data.train[:4000]
    baseline = _marginal_baseline_nll(data.train, data.test)
    model = VAE(data.dim, (200,), 8, seed=0)
    before = evaluate(model, data.test, make_rng(0))["elbo"]
    Trainer(model, data, TrainConfig(epochs=4, batch_size=64, seed=0), str(tmp_path),
            log=lambda m: None).fit()
    after = evaluate(model, data.test, make_rng(0))["elbo"]
    assert after > before
    # the bound on log p(x) must beat the exact log-likelihood of the best z-free model
    assert -after < baseline, (after, baseline)
