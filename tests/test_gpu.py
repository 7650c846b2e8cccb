"""The CuPy path equals the NumPy path: one training step and the importance-sampled estimate.

Skipped without CuPy or without an NVIDIA GPU (marker ``gpu``; run with ``pytest -m gpu``).
Tolerance: float32 with O(1) inputs through a few layers; each GEMM sums up to 784 products, so
values agree to about sqrt(784) * 2^-24 relative and gradients to 1e-4 of their largest entry
(cuBLAS and OpenBLAS sum in different orders; the elementwise kernels differ by a few ulp).
"""
import numpy as np
import pytest

cp = pytest.importorskip("cupy")
try:
    _n_gpus = cp.cuda.runtime.getDeviceCount()
except Exception:                                    # CUDA driver missing or unusable
    _n_gpus = 0
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_n_gpus < 1, reason="needs an NVIDIA GPU")]

from minivae import kernels                           # noqa: E402
from minivae.likelihood import importance_log_likelihood  # noqa: E402
from minivae.model import VAE                         # noqa: E402
from minivae.optim import Adam                        # noqa: E402


def _pair(act):
    cpu = VAE(784, (64,), 8, activation=act, seed=5, device="cpu")
    gpu = VAE(784, (64,), 8, activation=act, seed=5, device="cuda")
    np.testing.assert_array_equal(cp.asnumpy(gpu.buffer.data), cpu.buffer.data)
    return cpu, gpu


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_training_step_matches_numpy(act):
    cpu, gpu = _pair(act)
    rng = np.random.default_rng(0)
    x = (rng.random((32, 784)) < 0.5).astype(np.float32)
    eps = rng.standard_normal((1, 32, 8), dtype=np.float32)
    assert kernels.active(cp.asarray(x)) == "cupy"
    t_cpu = cpu.forward_backward(x, eps)
    t_gpu = gpu.forward_backward(cp.asarray(x), cp.asarray(eps))
    assert abs(float(t_gpu.loss) - float(t_cpu.loss)) <= 1e-4 * abs(float(t_cpu.loss))
    g_cpu, g_gpu = cpu.buffer.grad, cp.asnumpy(gpu.buffer.grad)
    assert np.max(np.abs(g_gpu - g_cpu)) <= 1e-4 * np.max(np.abs(g_cpu))
    o_cpu, o_gpu = Adam(cpu.buffer), Adam(gpu.buffer)
    o_cpu.step()
    o_gpu.step()
    # one Adam step moves each parameter by about lr = 1e-3: compare the moves
    d = np.abs(cp.asnumpy(gpu.buffer.data) - cpu.buffer.data)
    assert np.max(d) <= 1e-5


def test_importance_sampled_estimate_matches_numpy():
    cpu, gpu = _pair("relu")
    x = (np.random.default_rng(1).random((20, 784)) < 0.5).astype(np.float32)
    # the same noise on both devices: draw on the host, feed the GPU generator's role by hand
    k = 50
    est_cpu = importance_log_likelihood(cpu, x, k, np.random.default_rng(2), rows=1000)

    class HostNoise:                                   # a cupy-facing generator with numpy draws
        def __init__(self, seed):
            self.rng = np.random.default_rng(seed)

        def standard_normal(self, shape, dtype):
            return cp.asarray(self.rng.standard_normal(shape, dtype=dtype))

    est_gpu = importance_log_likelihood(gpu, cp.asarray(x), k, HostNoise(2), rows=1000)
    np.testing.assert_allclose(est_gpu, est_cpu, rtol=1e-5, atol=1e-3)


def test_kernels_match_reference_on_gpu():
    rng = np.random.default_rng(3)
    logits = cp.asarray(rng.standard_normal((2, 16, 784), dtype=np.float32) * 5)
    x = cp.asarray((rng.random((16, 784)) < 0.5).astype(np.float32))
    nll, g = kernels.bernoulli_nll_grad(logits, x, 0.25)
    with kernels.use("reference"):
        nll_r, g_r = kernels.bernoulli_nll_grad(logits, x, 0.25)
    np.testing.assert_allclose(cp.asnumpy(nll), cp.asnumpy(nll_r), rtol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(g), cp.asnumpy(g_r), atol=1e-6)
