"""Benchmark minivae's CPU training and importance-sampled evaluation beside its peers; JSON out.

    python scripts/bench.py                                  # both standard models, batch 128
    python scripts/bench.py --arch 784-400-20:relu --batch 32 128 1024 --epochs 3
    python scripts/bench.py --peer                           # + PyTorch, JAX, the load test
    python scripts/bench.py --peer --out docs/results/bench  # also writes bench-peer.json / .md
    python scripts/bench.py --device cuda [bench_gpu options]  # the GPU benchmark (bench_gpu.py)

    python scripts/bench.py --arch 784-256-20:relu:conv16,32 --epochs 2 --iwae-k 0 --peer
                                                             # the conv VAE vs its PyTorch peer

Per model (``784-400-20:relu`` and ``784-200-200-50:tanh`` by default; ``DIMS:ACT``, or
``DIMS:ACT:convC1,C2,..`` for the convolutional VAE: 28x28 images, kernel 4, stride 2, the
channels C1, C2, .. and DIMS's inner widths as its dense layers) and batch size:
  train     epoch time (median over the epochs after the first, which warms up) of
            N_TRAIN // batch steps on synthetic binary data (the peer's ``load_data('synthetic')``:
            default_rng(1000).random((60000, 784)) < 0.5), images/s, through the public step:
            model.forward_backward(xb, eps); opt.step(), with the batch gathered and the noise
            drawn into preallocated buffers (np.take(out=, mode='clip') as the trainer,
            standard_normal(out=)).
  gemm      the model's GEMM FLOPs per step (forward, dW, and dX except the first layer's) and
            the time of exactly those np.matmul calls at the model's shapes, measured in the
            same run: the GEMM floor of an epoch, and the fraction of it the epoch reaches.
  iwae      minivae.evaluation.importance_log_likelihood, K samples on the first N test images
            (rows=10000 per decoder call, as the peers), samples/s, and its decoder-GEMM floor.
  memory    peak resident set (ru_maxrss) of a fresh process per measurement.
  peer      (--peer) ../shared/bench/torch_vae.py (PyTorch eager) and jax_vae.py (the whole
            step jitted; its compile time reported apart, not in the epoch), same model, data,
            batch, threads and initial weights, run right after minivae's; for a conv model
            scripts/peers/torch_conv_vae.py.  Ratios peer/minivae (> 1: minivae faster).
  load      (--peer) the load test: two busy processes (``python -c 'while True: pass'``)
            started on the cores by this script and stopped after it; each side's epoch time
            under load over its epoch time on the idle machine (the growth factor).  minivae
            runs under its own threading policy (minivae.threads: the thread variables are
            removed from its environment), also once with --threads BLAS threads forced.
Threads: --threads for the peers' pools (OPENBLAS/OMP/MKL/NUMBA_NUM_THREADS) and for minivae
as MINIVAE_THREADS (its policy then applies that count; each worker's JSON records the decision);
OPENBLAS_CORETYPE is reported as found in the environment, and both sides run under it.
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
REPO_PEERS = os.path.join(HERE, "peers")         # peers kept in the repository (the conv VAE)
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "GOTO_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "MINIVAE_THREADS")
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
            np.take(train, perm[s * B:(s + 1) * B], axis=0, out=xb, mode="clip")
            noise_rng.standard_normal(out=eps, dtype=np.float32)
            total += float(model.forward_backward(xb, eps).loss)
            opt.step()
        epoch_s.append(time.perf_counter() - t0)
        losses.append(total / steps)
    steady = statistics.median(epoch_s[1:] or epoch_s)
    res = dict(epoch_s=round(steady, 4), epoch_s_all=[round(t, 4) for t in epoch_s],
               images_per_epoch=steps * B, images_per_s=round(steps * B / steady, 1),
               train_elbo=round(-losses[-1], 4))
    if not a.no_floor:
        flops, secs = gemm_floor(step_gemms(dims, B) if channels is None
                                 else conv_step_gemms(model.conv, B))
        res.update(step_gemm_gflop=round(flops / 1e9, 5), gemm_floor_epoch_s=round(secs * steps, 4),
                   gemm_gflops_at_shape=round(flops / secs / 1e9, 1),
                   epoch_over_floor=round(steady / (secs * steps), 3),
                   gemm_fraction=round(secs * steps / steady, 3))
    return res


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
    from minivae import threads
    res["threads"] = threads.describe()
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


PEER_KEEP = ("version", "epoch_s", "epoch_s_all", "images_per_s", "train_elbo", "iwae_s",
             "iwae_samples_per_s", "iwae_logpx", "compile_s", "iwae_compile_s")


class Runner:
    """Builds and runs the command lines of minivae's workers and of the peers."""

    def __init__(self, a):
        self.a = a
        self.env = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.threads),
                        OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
                        NUMBA_NUM_THREADS=str(a.threads))
        self.env.pop("MINIVAE_THREADS", None)
        # minivae under its own policy: none of the thread variables set
        self.policy_env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
        # minivae given --threads through its own variable: its policy applies that count
        # (and runs its two-half evaluation), whatever the load when the worker starts
        self.minivae_env = dict(self.policy_env, MINIVAE_THREADS=str(a.threads))
        self.peer_py = os.path.join(PEER_DIR, ".venv", "bin", "python")

    def minivae(self, worker, model, batch, epochs=None, env=None, floor=True):
        a = self.a
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--model", model,
               "--batch", str(batch), "--epochs", str(epochs or a.epochs), "--seed", str(a.seed),
               "--iwae-k", str(a.iwae_k), "--iwae-n", str(a.iwae_n)]
        if not floor:
            cmd.append("--no-floor")
        r, rss = run_json(cmd, self.minivae_env if env is None else env)
        r.pop("peak_rss_mb", None)
        r["peak_rss_mb"] = rss
        return r

    def peer(self, framework, model, batch, epochs=None, iwae=False, train_epochs=None):
        """framework: 'torch' or 'jax'.  iwae: evaluate log p(x) (after a 1-epoch training when
        train_epochs is 1: the IWAE timing does not need a trained model)."""
        a = self.a
        dims, act, channels = parse_model(model)
        if channels is not None:
            script = os.path.join(REPO_PEERS, "torch_conv_vae.py")
        else:
            script = os.path.join(PEER_DIR, "torch_vae.py" if framework == "torch" else "jax_vae.py")
        cmd = [self.peer_py, script, "--epochs", str(train_epochs or epochs or a.epochs),
               "--threads", str(a.threads), "--arch", "-".join(map(str, dims)), "--act", act,
               "--batch", str(batch), "--seed", str(a.seed)]
        if channels is not None:
            cmd += ["--channels", ",".join(map(str, channels))]
        if iwae:
            cmd += ["--eval-iwae", str(a.iwae_k), "--iwae-n", str(a.iwae_n)]
        t, rss = run_json(cmd, dict(self.env, PYTHONPATH=PEER_DIR))
        out = {k: t[k] for k in PEER_KEEP if k in t}
        out["peak_rss_mb"] = rss
        return out


class BusyLoad:
    """n busy processes (``python -c 'while True: pass'``) for the duration of a with-block."""

    def __init__(self, n, settle_s=1.0):
        self.n, self.settle_s, self.procs = n, settle_s, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(self.n)]
        time.sleep(self.settle_s)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()
        self.procs = []


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def train_entry(run, model, B, peers):
    r = run.minivae("train", model, B)
    entry = {"minivae": r}
    print(f"  {model} batch {B} minivae: {r['epoch_s']} s/epoch (floor "
          f"{r.get('gemm_floor_epoch_s')} s)", file=sys.stderr, flush=True)
    ratios = {}
    for fw in peers:
        t = run.peer(fw, model, B)
        entry[fw] = t
        ratios[f"{fw}_over_minivae"] = ratio(t["epoch_s"], r["epoch_s"])
        print(f"  {model} batch {B} {fw}: {t['epoch_s']} s/epoch", file=sys.stderr, flush=True)
    if peers:
        ratios["peak_rss_torch_over_minivae"] = ratio(entry.get("torch", {}).get("peak_rss_mb"),
                                                      r["peak_rss_mb"])
        entry["ratios"] = ratios
    return entry


def iwae_entry(run, model, peers):
    r = run.minivae("iwae", model, 128)
    entry = {"minivae": r}
    ratios = {}
    for fw in peers:
        t = run.peer(fw, model, 128, iwae=True, train_epochs=1)
        entry[fw] = t
        ratios[f"{fw}_over_minivae"] = ratio(t.get("iwae_s"), r["iwae_s"])
    if peers:
        entry["ratios"] = ratios
    print(f"  {model} iwae: " + ", ".join(f"{k} {v.get('iwae_s')} s" for k, v in entry.items()
                                           if k != "ratios"), file=sys.stderr, flush=True)
    return entry


def load_test(run, model, idle, peers, epochs):
    """Growth factors of the epoch time under two busy processes (see the module docstring)."""
    B = 128
    res = dict(model=model, batch=B, busy_processes=2, epochs=epochs)
    base = run.minivae("train", model, B, epochs=epochs, env=run.policy_env, floor=False)
    res["minivae_idle"] = {k: base[k] for k in ("epoch_s", "epoch_s_all", "threads")}
    with BusyLoad(2):
        res["load_avg_start"] = os.getloadavg()
        loaded = run.minivae("train", model, B, epochs=epochs, env=run.policy_env, floor=False)
        res["minivae_loaded"] = {k: loaded[k] for k in ("epoch_s", "epoch_s_all", "threads")}
        # without the policy: the BLAS thread count set by the user (OPENBLAS_NUM_THREADS)
        forced = run.minivae("train", model, B, epochs=2, env=run.env, floor=False)
        res["minivae_forced_threads_loaded"] = {k: forced[k] for k in ("epoch_s", "epoch_s_all")}
        res["minivae_forced_threads"] = run.a.threads
        for fw in peers:
            res[f"{fw}_loaded"] = run.peer(fw, model, B, epochs=epochs)
        res["load_avg_end"] = os.getloadavg()
    res["growth"] = {"minivae": ratio(loaded["epoch_s"], base["epoch_s"]),
                     "minivae_forced_threads": ratio(forced["epoch_s"], idle["minivae"]["epoch_s"])}
    for fw in peers:
        res["growth"][fw] = ratio(res[f"{fw}_loaded"]["epoch_s"], idle[fw]["epoch_s"])
    print(f"  load test: growth {res['growth']}", file=sys.stderr, flush=True)
    return res


def _f(v, fmt="{:.2f}"):
    return "—" if v is None else fmt.format(v)


def table(result):
    """The side-by-side table (markdown) of a --peer result."""
    rows = ["| setting | minivae | PyTorch eager | JAX jit (compile s) | GEMM floor | "
            "minivae / floor | PyTorch / minivae | JAX / minivae |",
            "|---|---|---|---|---|---|---|---|"]
    for model, m in result["models"].items():
        for B, e in m["train"].items():
            r, t, j = e["minivae"], e.get("torch", {}), e.get("jax", {})
            rows.append(f"| {model}, batch {B}, s/epoch | {_f(r['epoch_s'])} | "
                        f"{_f(t.get('epoch_s'))} | {_f(j.get('epoch_s'))} "
                        f"({_f(j.get('compile_s'), '{:.1f}')}) | {_f(r.get('gemm_floor_epoch_s'))} "
                        f"| {_f(r.get('epoch_over_floor'))} | {_f(ratio(t.get('epoch_s'), r['epoch_s']))} "
                        f"| {_f(ratio(j.get('epoch_s'), r['epoch_s']))} |")
        if "iwae" in m:
            e = m["iwae"]
            r, t, j = e["minivae"], e.get("torch", {}), e.get("jax", {})
            rows.append(f"| {model}, log p(x) K={result['iwae_k']} on {result['iwae_n']} images, s "
                        f"| {_f(r['iwae_s'])} | {_f(t.get('iwae_s'))} | {_f(j.get('iwae_s'))} "
                        f"({_f(j.get('iwae_compile_s'), '{:.1f}')}) | "
                        f"{_f(r.get('iwae_decoder_gemm_floor_s'))} | {_f(r.get('iwae_over_floor'))} "
                        f"| {_f(ratio(t.get('iwae_s'), r['iwae_s']))} "
                        f"| {_f(ratio(j.get('iwae_s'), r['iwae_s']))} |")
    lt = result.get("load_test")
    if lt:
        g = lt["growth"]
        rows.append(f"| load test ({lt['model']}, batch {lt['batch']}, 2 busy processes): "
                    f"epoch under load / idle | {_f(g.get('minivae'))}x "
                    f"({lt['minivae_forced_threads']} BLAS threads forced: "
                    f"{_f(g.get('minivae_forced_threads'))}x) | "
                    f"{_f(g.get('torch'))}x | {_f(g.get('jax'))}x | | | | |")
    return "\n".join(rows)


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
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default: 128; with --peer 32 128 1024)")
    p.add_argument("--epochs", type=int, default=4, help="the first one is a warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iwae-k", type=int, default=1000, help="0: skip the evaluation benchmark")
    p.add_argument("--iwae-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer", action="store_true",
                   help="also run the PyTorch and JAX peers and the load test")
    p.add_argument("--no-jax", action="store_true", help="with --peer: PyTorch only")
    p.add_argument("--no-load-test", action="store_true", help="with --peer: skip the load test")
    p.add_argument("--load-epochs", type=int, default=3, help="epochs of each load-test run")
    p.add_argument("--out", help="a folder: write bench-peer.json (or bench.json) and the table")
    p.add_argument("--worker", choices=["train", "iwae"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--no-floor", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        a.batch = a.batch[0] if a.batch else 128
        return worker(a)
    batches = a.batch or ([32, 128, 1024] if a.peer else [128])
    run = Runner(a)
    if a.peer and not os.path.exists(run.peer_py):
        raise SystemExit(f"bench: no peer venv at {run.peer_py}; run bash {PEER_DIR}/setup.sh once")
    result = dict(batches=batches, threads=a.threads, epochs=a.epochs, iwae_k=a.iwae_k,
                  iwae_n=a.iwae_n, openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"),
                  cores=os.cpu_count(), load_avg_start=os.getloadavg(), models={})
    for model in a.arch:
        channels = parse_model(model)[2]
        peers = [] if not a.peer else (["torch"] if a.no_jax or channels is not None
                                       else ["torch", "jax"])
        m = {"train": {}}
        for B in batches:
            m["train"][B] = train_entry(run, model, B, peers)
        if a.iwae_k and channels is None:        # the conv peer has no importance sampling
            m["iwae"] = iwae_entry(run, model, peers)
        result["models"][model] = m
    if a.peer and not a.no_load_test:
        model = a.arch[0]
        peers = ["torch"] if a.no_jax or parse_model(model)[2] is not None else ["torch", "jax"]
        if 128 in result["models"][model]["train"]:
            idle = result["models"][model]["train"][128]
        else:
            idle = train_entry(run, model, 128, peers)
        result["load_test"] = load_test(run, model, idle, peers, a.load_epochs)
    result["load_avg_end"] = os.getloadavg()
    text = table(result) if a.peer else None
    if text:
        result["table"] = text
        print(text, file=sys.stderr)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        name = "bench-peer" if a.peer else "bench"
        with open(os.path.join(a.out, name + ".json"), "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        if text:
            with open(os.path.join(a.out, name + ".md"), "w") as f:
                f.write(text + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
