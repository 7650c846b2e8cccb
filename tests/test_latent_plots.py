"""Latent figures: the codes each figure decodes (exact), the files written by the trainer's CLI
and by `minivae traverse RUN`, and its errors (exit 2, one line)."""
import os
from statistics import NormalDist

import numpy as np
import pytest

import minivae.data.datasets as datasets
from minivae import cli, latent_plots, metrics
from minivae.errors import MinivaeError
from minivae.model import VAE


def test_traversal_codes_sweep_one_latent_around_the_mean():
    mu = np.array([0.5, -1.0, 2.0])
    values = np.array([-3.0, 0.0, 3.0])
    z = latent_plots.traversal_codes(mu, [2, 0], values)
    assert z.shape == (6, 3)
    assert np.array_equal(z[:3, 2], mu[2] + values) and np.all(z[:3, :2] == mu[:2])
    assert np.array_equal(z[3:, 0], mu[0] + values) and np.all(z[3:, 1:] == mu[1:])
    assert np.array_equal(z[1], mu) and np.array_equal(z[4], mu)       # v = 0: the mean itself


def test_manifold_codes_are_prior_quantiles():
    z = latent_plots.manifold_codes(5)
    q = [NormalDist().inv_cdf((k + 0.5) / 5) for k in range(5)]
    assert z.shape == (25, 2)
    assert np.allclose(z[:5, 0], q) and np.allclose(z[:5, 1], q[-1])   # top row: z2 largest
    assert np.allclose(z[20:, 1], q[0]) and np.allclose(z[::5, 0], q[0])
    assert np.allclose(z.mean(0), 0, atol=1e-12)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(datasets, "SHAPES_TRAIN", 300)
    mp.setattr(datasets, "SHAPES_TEST", 50)
    d = tmp_path_factory.mktemp("lat")
    try:
        for z in (2, 3):
            assert cli.main(["train", "--hidden", "16", "--latent-dim", str(z), "--epochs", "1",
                             "--batch-size", "100", "--no-progress",
                             "--out", str(d / f"z{z}")]) == 0
        yield d, mp
    finally:
        mp.undo()


def png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 2000


def test_train_writes_the_latent_figures(small):
    d, _ = small
    assert all(png(d / "z2" / n) for n in ("traversals.png", "manifold.png", "mi.png"))
    assert png(d / "z3" / "traversals.png") and png(d / "z3" / "mi.png")
    assert not (d / "z3" / "manifold.png").exists()          # 3-D: no manifold


def test_traverse_command_writes_into_out(small, tmp_path, capsys):
    d, _ = small
    assert cli.main(["traverse", str(d / "z2"), "--out", str(tmp_path), "--image", "4"]) == 0
    printed = capsys.readouterr().out.split()
    assert [os.path.basename(p) for p in printed] == ["traversals.png", "manifold.png", "mi.png"]
    assert all(png(p) for p in printed)


@pytest.mark.parametrize("argv,msg", [(["--out", "/nonexistent/x"], "no such folder"),
                                      (["--image", "50"], "held-out split has 50")])
def test_traverse_errors(small, argv, msg, capsys):
    d, _ = small
    assert cli.main(["traverse", str(d / "z3"), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_traverse_of_a_missing_run_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["traverse", str(tmp_path / "none")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_figures_functions_directly(tmp_path, rng):
    model = VAE(64, (8,), 2, seed=0)
    x = rng.random((20, 64)).astype(np.float32)
    kl = np.array([0.1, 2.0])
    latent_plots.save_traversals(tmp_path / "t.png", model, x[0], kl, (8, 8))
    latent_plots.save_manifold(tmp_path / "m.png", model, (8, 8), n=4)
    r = metrics.mig(rng.standard_normal((200, 2)), rng.integers(0, 3, (200, 2)))
    latent_plots.save_mi_heatmap(tmp_path / "h.png", r, kl, ["a", "b"])
    assert all(png(tmp_path / n) for n in ("t.png", "m.png", "h.png"))
    with pytest.raises(MinivaeError, match="2-D latent"):
        latent_plots.save_manifold(tmp_path / "x.png", VAE(64, (8,), 3), (8, 8))


def test_bernoulli_latents_are_refused(tmp_path, rng):
    from minivae.discrete import DiscreteVAE
    with pytest.raises(MinivaeError, match="Gaussian latents"):
        latent_plots.write_latent_figures(DiscreteVAE(64, (8,), 3), str(tmp_path),
                                          rng.random((4, 64)), (8, 8))
