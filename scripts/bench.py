"""Benchmark minivae's CPU training and importance-sampled evaluation; prints one JSON object.

    python scripts/bench.py                                  # both standard models, batch 128
    python scripts/bench.py --arch 784-400-20:relu --batch 512 --epochs 3
    python scripts/bench.py --peer                           # + the PyTorch peer, side by side
    python scripts/bench.py --device cuda [bench_gpu options]  # the GPU benchmark (bench_gpu.py)

    python scripts/bench.py --arch 784-256-20:relu:conv16,32 --epochs 2 --iwae-k 0 --peer
                                                             # the conv VAE vs torch_conv_vae.py

Per model (``784-400-20:relu`` and ``784-200-200-50:tanh`` by default; ``DIMS:ACT``, or
``DIMS:ACT:convC1,C2,..`` for the convolutional VAE: 28x28 images, kernel 4, stride 2, the
channels C1, C2, .. and DIMS's inner widths as its dense layers):
  train     epoch time (median over the epochs after the first, which warms up) of
            N_TRAIN // batch steps on synthetic binary data (the peer's ``load_data('synthetic')``:
            default_rng(1000).random((60000, 784)) < 0.5), images/s, through the public step:
            model.forward_backward(xb, eps); opt.step(), with the batch gathered and the noise
            drawn into preallocated buffers (np.take(out=), standard_normal(out=)).
  gemm      the model's GEMM FLOPs per step (forward, dW, and dX except the first layer's) and
            the time of exactly those np.matmul calls at the model's shapes, measured in the
            same run: the GEMM floor of an epoch, and the fraction of it the epoch reaches.
  iwae      minivae.evaluation.importance_log_likelihood, K samples on the first N test images
            (rows=10000 per decoder call, as the peer), samples/s, and its decoder-GEMM floor.
  memory    peak resident set (ru_maxrss) of a fresh process per measurement.
  peer      (--peer) ../shared/bench/torch_vae.py (torch_conv_vae.py for a conv model; its
            weights start equal to minivae's) with its venv, same model, data, batch,
            threads, run right after minivae's; ratios peer/minivae (> 1: minivae faster).
Threads: --threads for OpenBLAS (and Numba); OPENBLAS_CORETYPE is reported as found in the
environment, and both sides run under the same setting.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# the peer beside the checkout (../shared/bench); MINIVAE_PEER_DIR overrides (from a worktree)
PEER_DIR = os.environ.get("MINIVAE_PEER_DIR") or os.path.normpath(
    os.path.join(HERE, "..", "..", "shared", "bench"))
N_TRAIN, N_TEST, N_PIX = 60000, 10000, 784


def parse_model(text):
    """DIMS:ACT[:convC1,C2,..] -> (dims, act, conv channels or None)."""
    dims, _, rest = text.partition(":")
    act, _, conv = rest.partition(":")
    dims = [int(d) for d in dims.split("-")]
    channels = [int(c) for c in conv[len("conv"):].split(",")] if conv.startswith("conv") else None
    return dims, act or ("relu" if len(dims) == 3 else "tanh"), channels


def make_model(model_spec, seed):
    from minivae.model import VAE
    dims, act, channels = parse_model(model_spec)
    conv = {} if channels is None else dict(arch="conv", image_shape=(28, 28), channels=channels,
                                            kernel=4, stride=2)
    return VAE(dims[0], tuple(dims[1:-1]), dims[-1], activation=act, seed=seed, **conv)


def synthetic(seed, n):
    import numpy as np
    return (np.random.default_rng(seed).random((n, N_PIX), np.float32) < 0.5).astype(np.float32)


def layer_shapes(dims):
    enc = list(zip(dims[:-2], dims[1:-1])) + [(dims[-2], 2 * dims[-1])]
    dec_dims = [dims[-1]] + dims[-2:0:-1] + [dims[0]]
    return enc, list(zip(dec_dims[:-1], dec_dims[1:]))


def time_call(fn, repeats=5, min_block_s=0.05):
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if time.perf_counter() - t0 >= min_block_s:
            break
        reps *= 2
    blocks = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        blocks.append((time.perf_counter() - t0) / reps)
    return statistics.median(blocks)


def gemm_floor(shapes):
    """(flops, seconds) of np.matmul over [(m, k, n, trans_a, trans_b)], float32."""
    import numpy as np
    rng = np.random.default_rng(0)
    flops = secs = 0.0
    for m, k, n, ta, tb in shapes:
        a = rng.standard_normal((k, m) if ta else (m, k), np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n), np.float32)
        out = np.empty((m, n), np.float32)
        a, b = (a.T if ta else a), (b.T if tb else b)
        secs += time_call(lambda: np.matmul(a, b, out=out))
        flops += 2.0 * m * k * n
    return flops, secs


def conv_step_gemms(arch, B):
    """The GEMMs of one step of a ConvArch (minivae.conv's lowering) as (m, k, n, ta, tb)."""
    K = arch.kernel
    chans = (arch.image[0], *arch.channels)
    out = []
    for i, (c, o) in enumerate(zip(chans[:-1], chans[1:])):        # encoder Conv2d
        h, w = arch.sides[i + 1]
        n, ckk = B * h * w, c * K * K
        out += [(o, ckk, n, False, False), (o, n, ckk, False, True)]   # Y = Wm cols, dW
        if i > 0:
            out.append((ckk, o, n, True, False))                       # dcols = Wm^T dY
    rch, sides = chans[::-1], arch.sides[::-1]
    for i, (c, o) in enumerate(zip(rch[:-1], rch[1:])):            # decoder ConvTranspose2d
        h, w = sides[i]
        n, okk = B * h * w, o * K * K
        out += [(okk, c, n, True, False), (c, okk, n, False, False), (c, n, okk, False, True)]
    dense = [(arch.flat, *arch.hidden, 2 * arch.latent_dim),
             (arch.latent_dim, *arch.hidden[::-1], arch.flat)]
    for sizes in dense:                  # every dense layer needs dX (a conv or z precedes it)
        for i, o in zip(sizes[:-1], sizes[1:]):
            out += [(B, i, o, False, False), (i, B, o, True, False), (B, o, i, False, True)]
    return out


def step_gemms(dims, B):
    enc, dec = layer_shapes(dims)
    out = []
    for j, (i, o) in enumerate(enc + dec):
        out += [(B, i, o, False, False), (i, B, o, True, False)]
        if j > 0:                                      # the first layer needs no dX
            out.append((B, o, i, False, True))
    return out


# ----------------------------------------------------------------------------- workers
def work_train(a):
    import numpy as np
    from minivae.optim import Adam
    dims, act, channels = parse_model(a.model)
    model = make_model(a.model, a.seed)
    opt = Adam(model.buffer, lr=1e-3)
    train = synthetic(1000, N_TRAIN)
    B, Z = a.batch, dims[-1]
    steps = N_TRAIN // B
    order_rng, noise_rng = np.random.default_rng(a.seed), np.random.default_rng([a.seed, 2])
    xb = np.empty((B, N_PIX), np.float32)
    eps = np.empty((1, B, Z), np.float32)
    epoch_s, losses = [], []
    for _ in range(a.epochs):
        t0 = time.perf_counter()
        perm = order_rng.permutation(N_TRAIN)
        total = 0.0
        for s in range(steps):
            np.take(train, perm[s * B:(s + 1) * B], axis=0, out=xb)
            noise_rng.standard_normal(out=eps, dtype=np.float32)
            total += float(model.forward_backward(xb, eps).loss)
            opt.step()
        epoch_s.append(time.perf_counter() - t0)
        losses.append(total / steps)
    flops, secs = gemm_floor(step_gemms(dims, B) if channels is None
                             else conv_step_gemms(model.conv, B))
    steady = statistics.median(epoch_s[1:] or epoch_s)
    return dict(epoch_s=round(steady, 4), epoch_s_all=[round(t, 4) for t in epoch_s],
                images_per_epoch=steps * B, images_per_s=round(steps * B / steady, 1),
                train_elbo=round(-losses[-1], 4), step_gemm_gflop=round(flops / 1e9, 5),
                gemm_floor_epoch_s=round(secs * steps, 4),
                gemm_gflops_at_shape=round(flops / secs / 1e9, 1),
                epoch_over_floor=round(steady / (secs * steps), 3),
                gemm_fraction=round(secs * steps / steady, 3))


def work_iwae(a):
    import numpy as np
    from minivae.evaluation import importance_log_likelihood
    dims, act, _ = parse_model(a.model)
    model = make_model(a.model, a.seed)
    x = synthetic(1001, N_TEST)[:a.iwae_n]
    importance_log_likelihood(model, x[:10], a.iwae_k, np.random.default_rng(1))   # compile
    t0 = time.perf_counter()
    est = importance_log_likelihood(model, x, a.iwae_k, np.random.default_rng(a.seed))
    dt = time.perf_counter() - t0
    per_call = max(1, 10000 // a.iwae_k)
    rows, calls = per_call * a.iwae_k, -(-a.iwae_n // per_call)
    flops, secs = gemm_floor([(rows, i, o, False, False) for i, o in layer_shapes(dims)[1]])
    return dict(iwae_s=round(dt, 4), iwae_samples_per_s=round(a.iwae_k * a.iwae_n / dt, 1),
                iwae_logpx=round(float(est.mean()), 4),
                iwae_decoder_gemm_floor_s=round(secs * calls, 4),
                iwae_over_floor=round(dt / (secs * calls), 3))


def worker(a):
    res = (work_train if a.worker == "train" else work_iwae)(a)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(res), flush=True)


# ----------------------------------------------------------------------------- driver
def run_json(cmd, env):
    """Run cmd, return (its last stdout line as JSON, peak RSS MB of that one process tree)."""
    wrapper = ("import json, resource, subprocess, sys; "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(p.stderr[-2000:] if p.returncode else ''); "
               "print(json.dumps([p.returncode, p.stdout, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, capture_output=True,
                       text=True, check=True)
    rc, out, rss = json.loads(p.stdout)
    if rc:
        raise SystemExit(f"bench: {' '.join(cmd[:3])} ... failed (exit {rc}): {p.stderr}")
    return json.loads(out.strip().splitlines()[-1]), round(rss, 1)


def main():
    if "--device" in sys.argv:                    # the GPU benchmark lives in bench_gpu.py
        i = sys.argv.index("--device")
        device = sys.argv[i + 1] if i + 1 < len(sys.argv) else ""
        rest = sys.argv[1:i] + sys.argv[i + 2:]
        if device == "cuda":
            sys.path.insert(0, HERE)
            import bench_gpu
            return bench_gpu.main(rest)
        if device != "cpu":
            raise SystemExit(f"bench: --device must be cpu or cuda, got {device!r}")
        sys.argv[1:] = rest
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["784-400-20:relu", "784-200-200-50:tanh"],
                   help="models as DIMS:ACT")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4, help="the first one is a warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iwae-k", type=int, default=1000, help="0: skip the evaluation benchmark")
    p.add_argument("--iwae-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer", action="store_true", help="also run the PyTorch peer")
    p.add_argument("--worker", choices=["train", "iwae"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)

    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads), NUMBA_NUM_THREADS=str(a.threads))
    peer_py = os.path.join(PEER_DIR, ".venv", "bin", "python")
    if a.peer and not os.path.exists(peer_py):
        raise SystemExit(f"bench: no PyTorch venv at {peer_py}; run bash {PEER_DIR}/setup.sh once")
    result = dict(batch=a.batch, threads=a.threads, epochs=a.epochs,
                  openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"), cores=os.cpu_count(),
                  load_avg_start=os.getloadavg(), models={})
    me = [sys.executable, os.path.abspath(__file__), "--batch", str(a.batch), "--epochs",
          str(a.epochs), "--seed", str(a.seed), "--iwae-k", str(a.iwae_k), "--iwae-n",
          str(a.iwae_n)]
    for model in a.arch:
        dims, act, channels = parse_model(model)
        r, rss = run_json(me + ["--worker", "train", "--model", model], env)
        r["peak_rss_mb_train"] = rss
        iwae = a.iwae_k and channels is None      # the conv peer has no importance sampling
        if iwae:
            ri, rss_i = run_json(me + ["--worker", "iwae", "--model", model], env)
            r.update(ri, peak_rss_mb_iwae=rss_i)
        r.pop("peak_rss_mb", None)
        entry = {"minivae": r}
        if a.peer:
            arch = "-".join(map(str, dims))
            script = "torch_vae.py" if channels is None else "torch_conv_vae.py"
            cmd = [peer_py, os.path.join(PEER_DIR, script), "--epochs", str(a.epochs),
                   "--threads", str(a.threads), "--arch", arch, "--act", act, "--batch",
                   str(a.batch), "--seed", str(a.seed)]
            if channels is not None:
                cmd += ["--channels", ",".join(map(str, channels))]
            if iwae:
                cmd += ["--eval-iwae", str(a.iwae_k), "--iwae-n", str(a.iwae_n)]
            t, rss_t = run_json(cmd, dict(env, PYTHONPATH=PEER_DIR))
            keep = ("version", "epoch_s", "epoch_s_all", "images_per_s", "train_elbo", "iwae_s",
                    "iwae_samples_per_s", "iwae_logpx")
            entry["torch"] = {k: t[k] for k in keep if k in t}
            entry["torch"]["peak_rss_mb"] = rss_t
            ratios = dict(train_speedup=round(t["epoch_s"] / r["epoch_s"], 3))
            if iwae:
                ratios["iwae_speedup"] = round(t["iwae_s"] / r["iwae_s"], 3)
            ratios["peak_rss_torch_over_minivae"] = round(
                rss_t / max(r["peak_rss_mb_train"], r.get("peak_rss_mb_iwae", 0)), 3)
            entry["ratios"] = ratios
        result["models"][model] = entry
        print(f"{model}: {json.dumps(entry)}", file=sys.stderr, flush=True)
    result["load_avg_end"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
