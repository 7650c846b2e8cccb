"""The conv PyTorch peer (scripts/peers/torch_conv_vae.py) starts from minivae's weights: its
NumPy re-draw of the initialisation equals VAE(arch='conv').params exactly (no torch needed)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from minivae.model import VAE

PEER = Path(__file__).resolve().parents[1] / "scripts" / "peers" / "torch_conv_vae.py"


def _peer():
    spec = importlib.util.spec_from_file_location("torch_conv_vae", PEER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dims,channels,seed", [([784, 256, 20], [16, 32], 0),
                                                ([784, 64, 32, 8], [4, 8], 3),
                                                ([784, 16, 5], [6], 1)])
def test_conv_peer_weights_are_minivaes(dims, channels, seed):
    peer = _peer()
    params, P, sides = peer.init_params(dims, channels, 4, 2, seed)
    model = VAE(784, tuple(dims[1:-1]), dims[-1], seed=seed, arch="conv", image_shape=(28, 28),
                channels=channels, kernel=4, stride=2)
    L, n_dense = len(channels), len(dims) - 1
    names = ([f"enc.conv{i}" for i in range(L)] + [f"enc.{i}" for i in range(n_dense)]
             + [f"dec.{i}" for i in range(n_dense)] + [f"dec.conv{i}" for i in range(L)])
    assert len(params) == len(names)
    assert P == model.conv.padding and sides == [s[0] for s in model.conv.sides]
    for (kind, W, b), name in zip(params, names):
        assert kind == ("conv" if name.startswith("enc.conv") else
                        "convT" if name.startswith("dec.conv") else "dense")
        np.testing.assert_array_equal(W, model.params[name + ".W"], err_msg=name)
        np.testing.assert_array_equal(b, model.params[name + ".b"], err_msg=name)
