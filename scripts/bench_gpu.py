"""GPU benchmark: minivae on CuPy side by side with PyTorch eager on the same GPU; one JSON.

    python scripts/bench_gpu.py                          # both models, batch 128 / 1024 / 8192
    python scripts/bench.py --device cuda                # the same (bench.py hands over)
    python scripts/bench_gpu.py --no-peer --batch 128 --steps 50

Per model (784-400-20 ReLU and 784-200-200-50 tanh by default) and batch size:
  step_ms        median over 5 blocks of `steps` training steps (after `warmup` steps), each
                 block ended by a device synchronisation: gather the batch from the training set
                 resident on the device (60,000 synthetic binary images, as bench.py), draw the
                 noise on the device, forward + backward, Adam.  Both frameworks alike.
  images_per_s   batch / step time.
  gemm_floor_ms  cuBLAS (cupy.matmul) time of exactly the step's GEMMs at the model's shapes,
                 measured in the same run; step_over_floor = step_ms / gemm_floor_ms.
  peak_mb        peak device memory of the step: CuPy's pool (bytes held) / PyTorch's
                 max_memory_reserved (also max_memory_allocated).
  first_step_s   in a fresh process: from the start of the worker to the end of the first step,
                 with an empty kernel cache (compilation included) and again with the warm cache.
  iwae           importance-sampled log p(x) with K samples on N images (default K = 5000 on
                 10,000): seconds, samples/s, the estimate, peak memory; `rows` z samples decoded
                 per pass bound the memory (rows * max(D, H) numbers).
The PyTorch peer is defined here (not in ../shared/bench, which does not travel to a GPU
machine); it starts from minivae's initial weights and uses the same data and batch order.

For the tests (no GPU): ``--module fake`` runs every minivae path on tests/fakecupy.py and the
peer on the CPU, with tiny sizes, so the script's logic is exercised in CI.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


def use_module(name):
    """'cupy' (the real one) or 'fake' (tests/fakecupy.py installed as cupy)."""
    if name == "fake":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import fakecupy
        sys.modules["cupy"] = fakecupy
    import cupy
    return cupy


def sync(cp):
    cp.cuda.get_current_stream().synchronize()


def blocks(fn, sync_fn, steps, repeats=5):
    out = []
    for _ in range(repeats):
        sync_fn()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync_fn()
        out.append((time.perf_counter() - t0) / steps)
    return statistics.median(out)


def parse_model(text):
    dims, _, act = text.partition(":")
    dims = [int(d) for d in dims.split("-")]
    return dims, act or ("relu" if len(dims) == 3 else "tanh")


def layer_shapes(dims):
    enc = list(zip(dims[:-2], dims[1:-1])) + [(dims[-2], 2 * dims[-1])]
    dec_dims = [dims[-1]] + dims[-2:0:-1] + [dims[0]]
    return enc, list(zip(dec_dims[:-1], dec_dims[1:]))


def step_gemms(dims, B):
    enc, dec = layer_shapes(dims)
    out = []
    for j, (i, o) in enumerate(enc + dec):
        out += [(B, i, o, False, False), (i, B, o, True, False)]
        if j > 0:
            out.append((B, o, i, False, True))
    return out


def synthetic(seed, n, d=784):
    return (np.random.default_rng(seed).random((n, d), np.float32) < 0.5).astype(np.float32)


# ----------------------------------------------------------------------------- minivae
def minivae_model(a, dims, act):
    from minivae.model import VAE
    return VAE(dims[0], tuple(dims[1:-1]), dims[-1], activation=act, seed=a.seed, device="cuda")


def minivae_step_fn(cp, model, train, B, seed):
    from minivae.optim import Adam
    from minivae.philox import Philox
    opt = Adam(model.buffer, lr=1e-3)
    n = len(train)
    perm = cp.asarray(np.random.default_rng(seed).permutation(n))
    rng = Philox([seed, 2], cp)
    xb = cp.empty((B, train.shape[1]), np.float32)
    eps = cp.empty((1, B, model.latent_dim), np.float32)
    pos = [0]

    def step():
        s = pos[0] % (n // B)
        cp.take(train, perm[s * B:(s + 1) * B], axis=0, out=xb)
        rng.standard_normal(out=eps, dtype=np.float32)
        model.forward_backward(xb, eps)
        opt.step()
        pos[0] += 1
    return step


def bench_minivae(cp, a, dims, act, B, train):
    pool = cp.get_default_memory_pool() if hasattr(cp, "get_default_memory_pool") else None
    if pool is not None:
        pool.free_all_blocks()
    model = minivae_model(a, dims, act)
    step = minivae_step_fn(cp, model, train, B, a.seed)
    for _ in range(a.warmup):
        step()
    t = blocks(step, lambda: sync(cp), a.steps)
    res = dict(step_ms=round(t * 1e3, 4), images_per_s=round(B / t, 1))
    if pool is not None:
        res["peak_mb"] = round(pool.total_bytes() / 2 ** 20, 1)
    # the GEMM floor at the step's shapes, same run
    mats = []
    g = np.random.default_rng(0)
    for m, k, n, ta, tb in step_gemms(dims, B):
        x = cp.asarray(g.standard_normal((k, m) if ta else (m, k), np.float32))
        y = cp.asarray(g.standard_normal((n, k) if tb else (k, n), np.float32))
        mats.append((x.T if ta else x, y.T if tb else y, cp.empty((m, n), np.float32)))

    def gemms():
        for x, y, o in mats:
            cp.matmul(x, y, out=o)
    gemms()
    floor = blocks(gemms, lambda: sync(cp), max(1, a.steps))
    res.update(gemm_floor_ms=round(floor * 1e3, 4), step_over_floor=round(t / floor, 3))
    return res, model


def iwae_minivae(cp, a, model, x):
    from minivae.evaluation import importance_log_likelihood
    from minivae.philox import Philox
    pool = cp.get_default_memory_pool() if hasattr(cp, "get_default_memory_pool") else None
    importance_log_likelihood(model, x[:2], min(a.iwae_k, 50), Philox(9, cp), rows=a.rows)
    if pool is not None:
        pool.free_all_blocks()
    sync(cp)
    t0 = time.perf_counter()
    est = importance_log_likelihood(model, x, a.iwae_k, Philox([a.seed, 4], cp), rows=a.rows)
    sync(cp)
    dt = time.perf_counter() - t0
    res = dict(iwae_s=round(dt, 4), iwae_samples_per_s=round(a.iwae_k * len(x) / dt, 1),
               iwae_logpx=round(float(est.mean()), 4))
    if pool is not None:
        res["iwae_peak_mb"] = round(pool.total_bytes() / 2 ** 20, 1)
    return res


# ----------------------------------------------------------------------------- PyTorch peer
def torch_peer(a, dims, act, B, train_np, model, test_np):
    import torch
    import torch.nn.functional as F
    dev = torch.device("cuda" if a.module == "cupy" else "cpu")
    enc, dec = layer_shapes(dims)
    names = [f"enc.{i}" for i in range(len(enc))] + [f"dec.{i}" for i in range(len(dec))]
    lins = torch.nn.ModuleList(torch.nn.Linear(i, o) for i, o in enc + dec).to(dev)
    with torch.no_grad():                     # the same starting point as minivae's model
        for lin, name in zip(lins, names):
            w, b = (model.params[f"{name}.{k}"] for k in "Wb")
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.get().T)))
            lin.bias.copy_(torch.from_numpy(b.get()))
    f = torch.relu if act == "relu" else torch.tanh
    ne = len(enc)

    def mlp(layers, h):
        for lin in layers[:-1]:
            h = f(lin(h))
        return layers[-1](h)

    def neg_elbo(x, eps):
        mu, logvar = mlp(lins[:ne], x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = F.binary_cross_entropy_with_logits(mlp(lins[ne:], z), x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.square() - logvar.exp())
        return (rec + kl) / x.shape[0]

    opt = torch.optim.Adam(lins.parameters(), lr=1e-3)
    train = torch.from_numpy(train_np).to(dev)
    n = len(train)
    perm = torch.from_numpy(np.random.default_rng(a.seed).permutation(n)).to(dev)
    gen = torch.Generator(device=dev).manual_seed(a.seed)
    Z = dims[-1]
    pos = [0]

    def step():
        s = pos[0] % (n // B)
        xb = train[perm[s * B:(s + 1) * B]]
        eps = torch.randn(B, Z, device=dev, generator=gen)
        loss = neg_elbo(xb, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        pos[0] += 1

    def tsync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(a.warmup):
        step()
    t = blocks(step, tsync, a.steps)
    res = dict(version=torch.__version__, step_ms=round(t * 1e3, 4), images_per_s=round(B / t, 1))
    if dev.type == "cuda":
        res.update(peak_mb=round(torch.cuda.max_memory_reserved() / 2 ** 20, 1),
                   peak_allocated_mb=round(torch.cuda.max_memory_allocated() / 2 ** 20, 1))
    if test_np is not None:
        x = torch.from_numpy(test_np).to(dev)

        @torch.no_grad()
        def logpx(k, rows):
            per = max(1, rows // k)
            total = 0.0
            for i in range(0, len(x), per):
                xb = x[i:i + per]
                mu, logvar = mlp(lins[:ne], xb).chunk(2, dim=-1)
                eps = torch.randn(k, *mu.shape, device=dev, generator=gen)
                z = mu + torch.exp(0.5 * logvar) * eps
                lp = -F.binary_cross_entropy_with_logits(
                    mlp(lins[ne:], z), xb.expand(k, -1, -1), reduction="none").sum(-1)
                lw = lp - 0.5 * (z.square() - eps.square() - logvar).sum(-1)
                total += (torch.logsumexp(lw, 0) - math.log(k)).sum()
            return float(total) / len(x)
        logpx(min(a.iwae_k, 50), a.rows)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        tsync()
        t0 = time.perf_counter()
        est = logpx(a.iwae_k, a.rows)
        dt = time.perf_counter() - t0
        res.update(iwae_s=round(dt, 4), iwae_samples_per_s=round(a.iwae_k * len(x) / dt, 1),
                   iwae_logpx=round(est, 4))
        if dev.type == "cuda":
            res["iwae_peak_mb"] = round(torch.cuda.max_memory_reserved() / 2 ** 20, 1)
    return res


# ----------------------------------------------------------------------------- first step
def first_step_worker(a):
    t0 = time.perf_counter()
    cp = use_module(a.module)
    dims, act = parse_model(a.arch[0])
    B = a.batch[0]
    train = cp.asarray(synthetic(1000, 4 * B))
    model = minivae_model(a, dims, act)
    minivae_step_fn(cp, model, train, B, a.seed)()
    sync(cp)
    print(json.dumps({"first_step_s": round(time.perf_counter() - t0, 3)}))


def first_step(a):
    """(seconds with an empty kernel cache, seconds with the cache it left), fresh processes."""
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, CUPY_CACHE_DIR=cache)
        for _ in range(2):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--module", a.module,
                   "--arch", a.arch[0], "--batch", str(a.batch[0])]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"bench_gpu: first-step worker failed:\n{p.stderr[-2000:]}")
            out.append(json.loads(p.stdout.strip().splitlines()[-1])["first_step_s"])
    return dict(first_step_s_cold=out[0], first_step_s_warm=out[1])


# ----------------------------------------------------------------------------- driver
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["784-400-20:relu", "784-200-200-50:tanh"])
    p.add_argument("--batch", nargs="+", type=int, default=[128, 1024, 8192])
    p.add_argument("--steps", type=int, default=100, help="steps per timed block (5 blocks)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--iwae-k", type=int, default=5000, help="0: skip the log p(x) benchmark")
    p.add_argument("--iwae-n", type=int, default=10000)
    p.add_argument("--rows", type=int, default=100000, help="z samples decoded per pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-peer", action="store_true", help="minivae alone")
    p.add_argument("--module", choices=["cupy", "fake"], default="cupy", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    if a.worker:
        return first_step_worker(a)
    cp = use_module(a.module)
    peer = not a.no_peer
    if peer:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise SystemExit("bench_gpu: PyTorch is not installed; pass --no-peer") from None
    train_np = synthetic(1000, a.n_train)
    test_np = synthetic(1001, a.iwae_n) if a.iwae_k else None
    train = cp.asarray(train_np)
    result = dict(device=_device_name(cp), module=a.module, steps=a.steps, warmup=a.warmup,
                  iwae_k=a.iwae_k, iwae_n=a.iwae_n, rows=a.rows, load_avg_start=os.getloadavg(),
                  models={})
    result.update(first_step(a))
    for model_name in a.arch:
        dims, act = parse_model(model_name)
        entry = {}
        for B in a.batch:
            r, model = bench_minivae(cp, a, dims, act, B, train)
            row = {"minivae": r}
            if peer:
                row["torch"] = torch_peer(a, dims, act, B, train_np, model, None)
                row["speedup_vs_torch"] = round(row["torch"]["step_ms"] / r["step_ms"], 3)
            entry[f"batch_{B}"] = row
            print(f"{model_name} batch {B}: {json.dumps(row)}", file=sys.stderr, flush=True)
        if a.iwae_k:
            model = minivae_model(a, dims, act)
            ri = {"minivae": iwae_minivae(cp, a, model, cp.asarray(test_np))}
            if peer:
                t = torch_peer(a, dims, act, a.batch[0], train_np[:a.batch[0] * 2], model,
                               test_np)
                ri["torch"] = {k: v for k, v in t.items() if k.startswith("iwae")}
                ri["speedup_vs_torch"] = round(ri["torch"]["iwae_s"] / ri["minivae"]["iwae_s"], 3)
            entry["iwae"] = ri
            print(f"{model_name} iwae: {json.dumps(ri)}", file=sys.stderr, flush=True)
        result["models"][model_name] = entry
    result["load_avg_end"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return result


def _device_name(cp):
    try:
        props = cp.cuda.runtime.getDeviceProperties(0)
        return props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    except Exception:
        return "fakecupy (CPU stand-in)" if getattr(cp, "__version__", "").endswith("fake") \
            else "unknown"


if __name__ == "__main__":
    main()
