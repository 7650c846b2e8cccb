"""The standard dynamically binarised MNIST results, reproduced, side by side with the PyTorch peer.

Protocol (the peer's, ../shared/bench/vaecommon.py): all 60,000 training images, a fresh
Bernoulli sample of the grey levels for every batch; the test set binarised once with
np.random.default_rng(1001); the test ELBO with one sample after every epoch; an importance-
sampled log p(x) at the end.  Architectures:

    784-400-20  ReLU, Adam 1e-3, batch 128            (the common example model)
    784-200-200-50  tanh, batch 20, the IWAE paper's schedule: lr = 1e-3 * 10^(-i/7) for 3^i
                    epochs, i = 0..7 (3,280 epochs in all; --epochs cuts it short)

    python scripts/mnist_results.py --arch 784-400-20 --act relu --epochs 10 --seeds 0 1 2 --peer
    python scripts/mnist_results.py --arch 784-200-200-50 --act tanh --batch 20 \
        --schedule iwae --epochs 30 --seeds 0 --final-iwae 5000

The convolutional VAE (``--channels``: minivae.conv.ConvArch; --arch then gives the dense
widths between the convolutions and the latent), beside scripts/peers/torch_conv_vae.py
(same architecture, same initial weights; run with the peers' venv of ../shared/bench):

    python scripts/mnist_results.py --channels 16,32 --arch 784-256-20 --epochs 10 --seeds 0 --peer

Writes <out>/results.json and <out>/curves.png; prints one JSON line.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import minivae
from minivae.backend import make_rng
from minivae.data import load_dataset
from minivae.evaluation import active_units, importance_log_likelihood
from minivae.model import VAE
from minivae.train import TrainConfig, Trainer
from minivae.rundir import read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
# the peer beside the checkout (../shared/bench); MINIVAE_PEER_DIR overrides (from a worktree)
BENCH = os.environ.get("MINIVAE_PEER_DIR") or os.path.normpath(
    os.path.join(HERE, "..", "..", "shared", "bench"))
# the peer's README: test ELBO after each of 10 epochs, 784-400-20, median of 3 seeds
PEER_README_CURVE = [-125.40, -113.21, -108.88, -106.86, -105.53, -104.41, -103.72, -103.05,
                     -102.55, -102.06]


def run_minivae(args, seed, data, out_dir):
    dims = [int(d) for d in args.arch.split("-")]
    conv = {} if not args.channels else dict(
        arch="conv", image_shape=(28, 28), channels=args.channels, kernel=args.kernel,
        stride=args.stride)
    model = VAE(dims[0], tuple(dims[1:-1]), dims[-1], args.act, "bernoulli", seed=seed,
                objective=args.objective, samples=args.k, **conv)
    run_dir = os.path.join(out_dir, f"minivae-seed{seed}")
    os.makedirs(run_dir, exist_ok=False)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, seed=seed,
                      lr_schedule=args.schedule)
    trainer = Trainer(model, data, cfg, run_dir, log=lambda m: print(f"[seed {seed}] {m}",
                                                                        file=sys.stderr))
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    rows = read_metrics(run_dir)
    train_s = sum(r["seconds"] for r in rows)
    res = dict(seed=seed, wall_s=round(wall, 1), train_s=round(train_s, 1),
               epochs=trainer.epoch, test_elbo_per_epoch=[round(r["test_elbo"], 3)
                                                          for r in rows[1:]])
    if args.iwae_k:
        xi = data.test[:args.iwae_n]
        t0 = time.perf_counter()
        ll = importance_log_likelihood(model, xi, args.iwae_k, make_rng([seed, 4]))
        res.update(iwae_k=args.iwae_k, iwae_n=len(xi), iwae_logpx=round(float(ll.mean()), 3),
                   iwae_s=round(time.perf_counter() - t0, 2))
    if args.final_iwae:
        xf = data.test[:args.final_iwae_n]
        t0 = time.perf_counter()
        ll = importance_log_likelihood(model, xf, args.final_iwae, make_rng([seed, 5]))
        res.update(final_iwae_k=args.final_iwae, final_iwae_n=len(xf),
                   final_logpx=round(float(ll.mean()), 3),
                   final_logpx_stderr=round(float(ll.std(ddof=1) / np.sqrt(len(ll))), 3),
                   final_iwae_s=round(time.perf_counter() - t0, 1))
    res["active_units"] = active_units(model, data.test)[0]
    return res


def run_peer(args, seed):
    py = os.path.join(BENCH, ".venv", "bin", "python")
    if not os.path.exists(py):
        raise SystemExit(f"the peer needs its venv: bash {BENCH}/setup.sh")
    script = (os.path.join(HERE, "peers", "torch_conv_vae.py") if args.channels
              else os.path.join(BENCH, "torch_vae.py"))
    cmd = [py, script, "--data", "mnist", "--data-dir",
           args.data_dir, "--epochs", str(args.epochs), "--batch", str(args.batch),
           "--arch", args.arch, "--act", args.act, "--seed", str(seed), "--threads",
           str(args.peer_threads), "--eval-each-epoch"]
    if args.channels:            # the conv peer has no importance-sampled evaluation
        cmd += ["--channels", ",".join(map(str, args.channels)), "--kernel", str(args.kernel),
                "--stride", str(args.stride)]
    else:
        cmd += ["--eval-iwae", str(args.iwae_k), "--iwae-n", str(args.iwae_n)]
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=BENCH)      # the conv peer imports the peers' vaecommon
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["seed"] = seed
    return res


def plot(path, ours, peer, title):
    """Test ELBO per epoch: the whole run (left) and its last epochs enlarged (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    n = len(ours[0]["test_elbo_per_epoch"])
    for ax, first in zip(axes, (1, max(1, n - 5))):
        for runs, label, style in ((ours, "minivae", "-o"), (peer, "PyTorch peer (this run)", "-s")):
            if runs:
                curves = np.array([r["test_elbo_per_epoch"] for r in runs])[:, first - 1:]
                e = np.arange(first, first + curves.shape[1])
                ax.plot(e, np.median(curves, 0), style, ms=3,
                        label=f"{label}, " + (f"median of {len(runs)} seeds" if len(runs) > 1
                                              else f"seed {runs[0].get('seed', '')}"))
                if len(runs) > 1:
                    ax.fill_between(e, curves.min(0), curves.max(0), alpha=0.2)
        if "784-400-20" in title and n >= first:
            ref = PEER_README_CURVE[first - 1:n]
            ax.plot(np.arange(first, first + len(ref)), ref, "k--", lw=1,
                    label="peer README (median of 3)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test ELBO, nats (one sample)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(title, fontsize=9)
    axes[1].set_title("the last epochs, enlarged (bands: min-max over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary_medians(summary):
    def med(runs, k):
        values = [r[k] for r in runs if k in r]
        return round(statistics.median(values), 3) if values else None
    ours, peer = summary["minivae"], summary["peer"]
    summary.update(minivae_final_test_elbo=med([dict(x=r["test_elbo_per_epoch"][-1])
                                                for r in ours], "x"),
                   minivae_iwae_logpx=med(ours, "iwae_logpx"),
                   peer_final_test_elbo=med(peer, "test_elbo"),
                   peer_iwae_logpx=med(peer, "iwae_logpx"))
    return summary


def combine(dirs, out):
    """One results.json (and curves.png) from single-seed runs of the same model."""
    parts = []
    for d in dirs:
        with open(os.path.join(d, "results.json")) as f:
            parts.append(json.load(f))
    same = ("arch", "act", "batch", "schedule", "epochs", "channels", "kernel", "stride")
    for part in parts[1:]:
        if any(part.get(k) != parts[0].get(k) for k in same):
            raise SystemExit(f"--combine: the runs differ in {', '.join(same)}")
    summary = {k: parts[0].get(k) for k in ("minivae_version", *same, "openblas_coretype")}
    summary.update(seeds=[s for part in parts for s in part["seeds"]],
                   load_avg=[part.get("load_avg") for part in parts],
                   minivae=[r for part in parts for r in part["minivae"]],
                   peer=[r for part in parts for r in part["peer"]])
    for part, r in zip(parts, summary["peer"]):      # runs made before the peer recorded it
        r.setdefault("seed", part["seeds"][0])
    os.makedirs(out, exist_ok=True)
    _summary_medians(summary)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(os.path.join(out, "curves.png"), summary["minivae"], summary["peer"],
         _title(summary["arch"], summary["act"], summary["batch"], summary["channels"],
                summary["kernel"], summary["stride"]))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("minivae", "peer")}))


def _title(arch, act, batch, channels=None, kernel=None, stride=None):
    net = arch if not channels else (f"conv {'-'.join(map(str, channels))} k{kernel} s{stride}, "
                                     f"dense {arch}")
    return f"dynamically binarised MNIST, {net} {act}, batch {batch}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="784-400-20")
    p.add_argument("--act", default="relu")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=("constant", "iwae"), default="constant",
                   help="iwae: lr * 10^(-i/7) for 3^i epochs (TrainConfig.lr_schedule)")
    p.add_argument("--objective", choices=("elbo", "iwae"), default="elbo")
    p.add_argument("--k", type=int, default=1, help="training samples (IWAE K)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data-dir", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist"))
    p.add_argument("--peer", action="store_true", help="also run the PyTorch peer, same seeds")
    p.add_argument("--peer-threads", type=int, default=2)
    p.add_argument("--channels", type=lambda t: [int(c) for c in t.split(",")], default=None,
                   help="a convolutional VAE with these channels (e.g. 32,64)")
    p.add_argument("--kernel", type=int, default=4)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--iwae-k", type=int, default=1000, help="0: no log p(x) estimate")
    p.add_argument("--iwae-n", type=int, default=1000)
    p.add_argument("--final-iwae", type=int, default=0, help="K of a final log p(x) estimate")
    p.add_argument("--final-iwae-n", type=int, default=10000)
    p.add_argument("--out", default=None)
    p.add_argument("--replot", metavar="DIR", help="redraw DIR/curves.png from DIR/results.json")
    p.add_argument("--combine", metavar="DIR", nargs="+",
                   help="merge the results.json of runs made one seed at a time (same model) "
                   "into --out/results.json and its curves")
    args = p.parse_args()
    if args.replot:
        with open(os.path.join(args.replot, "results.json")) as f:
            r = json.load(f)
        plot(os.path.join(args.replot, "curves.png"), r["minivae"], r["peer"],
             _title(r["arch"], r["act"], r["batch"], r.get("channels"), r.get("kernel"),
                    r.get("stride")))
        return
    if args.combine:
        return combine(args.combine, args.out)
    args.data_dir = os.path.abspath(args.data_dir)
    name = args.arch if not args.channels else "conv-" + "-".join(map(str, args.channels))
    out = args.out or os.path.join("runs", f"mnist-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out, exist_ok=False)
    data = load_dataset("mnist", data_dir=args.data_dir, binarize="dynamic", valid_size=0)
    ours, peer = [], []
    for seed in args.seeds:                       # side by side: one after the other, per seed
        ours.append(run_minivae(args, seed, data, out))
        if args.peer:
            peer.append(run_peer(args, seed))
    summary = _summary_medians(dict(
        minivae_version=minivae.__version__, arch=args.arch, act=args.act, batch=args.batch,
        schedule=args.schedule, epochs=args.epochs, channels=args.channels,
        kernel=args.kernel if args.channels else None,
        stride=args.stride if args.channels else None, load_avg=os.getloadavg(),
        seeds=args.seeds, openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"), minivae=ours,
        peer=peer))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(os.path.join(out, "curves.png"), ours, peer,
         _title(args.arch, args.act, args.batch, args.channels, args.kernel, args.stride))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("minivae", "peer")}))


if __name__ == "__main__":
    main()
