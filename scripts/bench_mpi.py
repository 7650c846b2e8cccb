"""Data-parallel scaling: measured on this machine (R = 1 and 2 ranks) and, on paper, on R
machines joined by a 10 or 100 Gb/s network.

    python scripts/bench_mpi.py                   # -> docs/results/mpi/{bench.json, scaling.png}
    python scripts/bench_mpi.py --steps 20 --models mlp --out /tmp/mpi    # a quick look

Measured (``mpiexec -n R python scripts/bench_mpi.py --worker``): the data-parallel step of
minivae/parallel.py (forward and backward on the rank's rows, the one all-reduce, Adam) on random
binary 28x28 data, global batch 128, for the 784-400-20 MLP VAE and the mnist-conv preset's conv
VAE; R = 1 with 1 and with 2 threads, R = 2 with 1 thread per rank (this machine has 2 cores).
Reported: images/s, the share of the step spent in the all-reduce (its wall time, which
includes waiting for the slower rank) and the bare all-reduce of the gradient buffer timed alone.

On paper: a ring all-reduce of S = 4P bytes over R machines costs
    T_ar(R) = 2 (R - 1) alpha + 2 (R - 1) / R * S / bw
(each machine sends and receives 2 (R - 1) / R of the buffer in 2 (R - 1) messages; alpha the
per-message latency: 25 us assumed for TCP over 10 Gb/s Ethernet, 5 us for 100 Gb/s RDMA; bw the
link's bytes per second).  With t the seconds per image of one machine (all its cores: the
quiet benchmark of scripts/bench.py for the MLP, docs/results/bench/bench-blas-auto.json, and the
conv model's time from the conv/MLP ratio measured here), one step of global batch B costs B t / R + T_ar(R) (no overlap of the all-reduce with the
backward: the gradient is reduced once, after it), so data parallelism
    pays (faster than one machine)        for B > T_ar(R) / (t (1 - 1/R))
    is at least 50 % efficient            for B >= R T_ar(R) / t.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = {"mlp": "784-400-20 MLP", "conv": "mnist-conv (conv 32-64 k4 s2, 256-20)"}
COLORS = {"mlp": "C0", "conv": "C1"}
NETWORKS = {"10 Gb/s": (10e9 / 8, 25e-6), "100 Gb/s": (100e9 / 8, 5e-6)}


def make_model(name):
    from minivae.model import VAE
    if name == "mlp":
        return VAE(784, (400,), 20, seed=0)
    return VAE(784, (256,), 20, arch="conv", image_shape=(28, 28), channels=(32, 64), kernel=4,
               stride=2, padding=1, seed=0)


def worker(args):
    from mpi4py import MPI
    from minivae.optim import Adam
    from minivae.parallel import Comm, DataParallel
    from minivae.train import TrainConfig
    comm = Comm(MPI.COMM_WORLD)
    model = make_model(args.model)
    par = DataParallel(comm, model, TrainConfig())
    opt = Adam(model.buffer, 1e-3)
    rng = np.random.default_rng(0)                    # the same on every rank
    B, Z = args.batch, model.latent_dim
    data = (rng.random((4 * B, 784)) < 0.3).astype(np.float32)

    def steps(n):
        for _ in range(n):
            xb = data[rng.integers(0, len(data), B)]
            eps = rng.standard_normal((1, B, Z), dtype=np.float32)
            par.step(xb, eps, {}, lambda: False)
            opt.step()
    steps(args.warmup)
    comm.comm.Barrier()
    par.reduce_s = 0.0
    t0 = time.perf_counter()
    steps(args.steps)
    wall = time.perf_counter() - t0
    share = np.array([par.reduce_s / wall])
    comm.allreduce(share)
    comm.comm.Barrier()                              # the bare all-reduce, all ranks ready
    buf = model.buffer.reduce_buffer
    n = 50
    t1 = time.perf_counter()
    for _ in range(n):
        comm.allreduce(buf)
    bare = (time.perf_counter() - t1) / n
    if comm.root:
        print(json.dumps({"model": args.model, "ranks": comm.size, "params": model.num_params(),
                          "batch": B, "steps": args.steps, "images_per_s": args.steps * B / wall,
                          "step_ms": 1e3 * wall / args.steps,
                          "allreduce_share": float(share[0] / comm.size),
                          "bare_allreduce_ms": 1e3 * bare if comm.size > 1 else 0.0}))


def measure(model, ranks, threads, args):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=ROOT)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [mpiexec if os.path.exists(mpiexec) else "mpiexec", "-n", str(ranks), sys.executable,
           os.path.abspath(__file__), "--worker", "--model", model, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if p.returncode:
        sys.exit(f"bench_mpi: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    row = json.loads(p.stdout.strip().splitlines()[-1])
    row["threads_per_rank"] = threads
    return row


def ring_allreduce_s(params, ranks, bw, alpha):
    S = 4.0 * params
    return 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * S / bw


QUIET = os.path.join(ROOT, "docs", "results", "bench", "bench-blas-auto.json")


def quiet_seconds_per_image():
    """The 784-400-20 step's seconds per image on this machine when it was quiet (bench.py's
    run at load ~0.9, 2 threads, batch 128): the machine-time the paper estimate starts from."""
    with open(QUIET) as f:
        d = json.load(f)
    return 1.0 / d["models"]["784-400-20:relu"]["minivae"]["images_per_s"], d["load_avg_start"]


def paper(rows):
    """The step on R machines.  t (seconds per image of one whole machine) is the quiet
    benchmark's for the MLP, and for the conv model that times the conv/MLP ratio measured
    here with one thread each (the ratio is what a shared machine still measures well)."""
    t_mlp, _ = quiet_seconds_per_image()
    one = {r["model"]: r for r in rows if r["ranks"] == 1 and r["threads_per_rank"] == 1}
    out = []
    for model in sorted(one):
        t = t_mlp * one["mlp"]["images_per_s"] / one[model]["images_per_s"] if "mlp" in one \
            else None
        if t is None:
            continue
        for net, (bw, alpha) in NETWORKS.items():
            for R in (2, 8, 100):
                T = ring_allreduce_s(one[model]["params"], R, bw, alpha)
                speed = {B: B * t / (B * t / R + T) for B in (128, 1024, 8192)}
                out.append({"model": model, "params": one[model]["params"], "network": net,
                            "ranks": R, "seconds_per_image_one_machine": t,
                            "allreduce_ms": 1e3 * T,
                            "pays_from_batch": T / (t * (1 - 1 / R)),
                            "half_efficient_from_batch": R * T / t,
                            "speedup_at_batch": {str(B): s for B, s in speed.items()}})
    return out


def figure(rows, est, path, load):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    models = sorted({r["model"] for r in rows})
    labels = ["R=1, 1 thread", "R=1, 2 threads", "R=2, 1 thread each"]
    keys = [(1, 1), (1, 2), (2, 1)]
    w = 0.8 / len(models)
    for i, m in enumerate(models):
        vals = [next(r for r in rows if r["model"] == m and (r["ranks"], r["threads_per_rank"])
                     == k) for k in keys]
        xs = np.arange(len(keys)) + i * w
        a.bar(xs, [v["images_per_s"] for v in vals], w, label=MODELS[m], color=COLORS[m])
        for x, v in zip(xs, vals):
            note = f"{v['images_per_s']:.0f}"
            if v["ranks"] > 1:
                note += f"\nall-reduce\n{100 * v['allreduce_share']:.0f}% of step"
            a.text(x, v["images_per_s"], note, ha="center", va="bottom", fontsize=7)
    a.set_xticks(np.arange(len(keys)) + w * (len(models) - 1) / 2)
    a.set_xticklabels(labels, fontsize=8)
    a.set_yscale("log")
    a.set_ylim(top=a.get_ylim()[1] * 4)
    a.set_ylabel("images / s (global batch 128, log scale)")
    a.set_title(f"measured on this 2-core machine (load average {load:.1f})", fontsize=9)
    a.legend(fontsize=7)
    B = np.logspace(1, 5, 200)
    for e in est:
        if e["ranks"] != 8:
            continue
        t, T = e["seconds_per_image_one_machine"], e["allreduce_ms"] / 1e3
        ls = "-" if e["network"] == "100 Gb/s" else "--"
        b.plot(B, B * t / (B * t / 8 + T), ls, color=COLORS[e["model"]], label=f"{MODELS[e['model']].split(' (')[0]}, "
               f"{e['network']}")
    b.axhline(1, color="0.5", lw=0.8)
    b.axhline(4, color="0.5", lw=0.8, ls=":")
    b.set_xscale("log")
    b.set_xlabel("global batch B")
    b.set_ylabel("speed-up over one machine")
    b.set_title("on paper: R = 8 machines, ring all-reduce (dotted: 50 % efficiency)",
                fontsize=9)
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", choices=sorted(MODELS), default="mlp")
    p.add_argument("--models", default="mlp,conv")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "mpi"))
    args = p.parse_args()
    if args.worker:
        return worker(args)
    load = os.getloadavg()
    rows = []
    for m in args.models.split(","):
        for ranks, threads in ((1, 1), (1, 2), (2, 1)):
            rows.append(measure(m, ranks, threads, args))
            print(json.dumps(rows[-1]), flush=True)
    est = paper(rows)
    os.makedirs(args.out, exist_ok=True)
    result = {"load_average_before": load, "load_average_after": os.getloadavg(),
              "cpus": os.cpu_count(), "measured": rows, "paper": est,
              "assumptions": {"alpha_s": {k: v[1] for k, v in NETWORKS.items()},
                              "bytes_per_s": {k: v[0] for k, v in NETWORKS.items()}}}
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    figure(rows, est, os.path.join(args.out, "scaling.png"), load[0])
    for e in est:
        sp = e["speedup_at_batch"]
        print(f"{e['model']:4s} {e['network']:8s} R={e['ranks']:3d}: t {1e6 * e['seconds_per_image_one_machine']:6.1f} us/image, all-reduce "
              f"{e['allreduce_ms']:6.2f} ms, pays from B > {e['pays_from_batch']:7.0f}, "
              f"50% efficient from B >= {e['half_efficient_from_batch']:8.0f}, speed-up at B "
              f"128 / 1024 / 8192: {sp['128']:.2f} / {sp['1024']:.2f} / {sp['8192']:.2f}")
    print(f"wrote {args.out}/bench.json and scaling.png (load average {load[0]:.2f} before, "
          f"{result['load_average_after'][0]:.2f} after)")


if __name__ == "__main__":
    main()
