"""Sweeps: independent training runs over a grid of beta x seed, spread over the ranks of one
MPI job (``mpiexec -n R minivae sweep ...``) or run one after another without MPI.

    minivae sweep --beta 1,2,4,8 --seeds 0,1,2 --out runs/sweep -- --epochs 10 --latent-dim 10

Run i of the grid (beta-major order) goes to rank i mod R; each is an ordinary ``minivae train``
(the options after ``--``, plus --beta, --seed and --out OUT/beta<b>-seed<s>), so every run is
its own run directory that ``minivae eval`` / ``sample`` / ``train --resume`` read.  Running the
same sweep command again continues it: a finished run (its last metric row at the final epoch)
is kept, an interrupted one (a checkpoint) is resumed, a missing one is started.  When every run
is done, rank 0 writes OUT/summary.json, OUT/summary.md (one row per beta: the final held-out
ELBO, distortion and KL, mean and standard deviation over the seeds) and
OUT/summary.png.
"""
import json
import math
import os
import sys

from .errors import MinivaeError

SUMMARY_KEYS = ("elbo", "distortion", "kl")


def parse_list(text, kind, name):
    try:
        values = [kind(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise MinivaeError(f"--{name} must be comma-separated {kind.__name__}s like "
                           f"{'1,2,4,8' if kind is float else '0,1,2'}, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise MinivaeError(f"--{name} needs values >= 0, got {text!r}")
    if len(set(values)) != len(values):
        raise MinivaeError(f"--{name} lists a value twice: {text!r}")
    return values


def run_name(beta, seed):
    return f"beta{beta:g}-seed{seed}"


def grid(betas, seeds):
    return [(b, s) for b in betas for s in seeds]


def state_of(run_dir, epochs):
    """'done', 'resume' or 'new' for a run directory of a run of `epochs` epochs."""
    from .rundir import CHECKPOINT, read_metrics
    if not os.path.isdir(run_dir) or not os.listdir(run_dir):
        return "new"
    rows = read_metrics(run_dir)
    if rows and rows[-1].get("epoch") == epochs and os.path.exists(os.path.join(run_dir,
                                                                                CHECKPOINT)):
        return "done"
    if os.path.exists(os.path.join(run_dir, CHECKPOINT)):
        return "resume"
    raise MinivaeError(f"{run_dir} exists without a checkpoint; remove it and run the sweep "
                       "again")


def run_sweep(betas, seeds, out, train_argv, comm=None, log=print):
    """Train the grid (this rank's share of it); rank 0 writes the summary when all are done.
    Returns 0, or 130 when a run was interrupted (the sweep continues when rerun)."""
    from . import cli
    parser = cli.build_parser()
    if any(a in ("--beta", "--seed", "--out", "--resume") or
           a.startswith(("--beta=", "--seed=", "--out=", "--resume=")) for a in train_argv):
        raise MinivaeError("the sweep sets --beta, --seed and --out of each run; drop them from "
                           "the training options after --")
    base = parser.parse_args(["train", *train_argv])       # argument errors before any run
    cli._resolve(base)
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    os.makedirs(out, exist_ok=True)
    status = 0
    for i, (beta, seed) in enumerate(grid(betas, seeds)):
        if i % size != rank:
            continue
        run_dir = os.path.join(out, run_name(beta, seed))
        state = state_of(run_dir, base.epochs)
        if state == "done":
            log(f"sweep: {run_dir} is done")
            continue
        if state == "resume":
            argv = ["train", "--resume", run_dir, "--epochs", str(base.epochs), "--no-progress"]
        else:
            argv = ["train", *train_argv, "--beta", f"{beta:g}", "--seed", str(seed), "--out",
                    run_dir, "--no-progress"]
        log(f"sweep: rank {rank}: {' '.join(argv)}")
        rc = cli.cmd_train(parser.parse_args(argv))
        if rc:
            status = rc
            break
    if comm is not None:
        comm.barrier("waiting for the other ranks' runs")
    if status:
        return status
    if rank == 0:
        rows = summarise(betas, seeds, out, base.epochs)
        write_summary(rows, out)
        log(f"sweep: summary in {os.path.join(out, 'summary.md')}")
    return 0


def final_metrics(run_dir):
    """The held-out (valid, else test) ELBO, distortion and KL of a run's last epoch."""
    from .rundir import read_metrics
    rows = read_metrics(run_dir)
    if not rows:
        raise MinivaeError(f"{run_dir} has no metrics; run the sweep again to finish it")
    last = rows[-1]
    split = "valid" if "valid_elbo" in last else "test"
    if f"{split}_elbo" not in last:
        raise MinivaeError(f"{run_dir} has no held-out metrics (--valid-size 0 and no test "
                           "split); a sweep compares runs on held-out data")
    return split, last["epoch"], {k: last[f"{split}_{k}"] for k in SUMMARY_KEYS}


def summarise(betas, seeds, out, epochs):
    """One row per beta: mean and sample standard deviation over the seeds of each metric,
    and every run's values."""
    rows = []
    for beta in betas:
        runs = {}
        for seed in seeds:
            split, ep, m = final_metrics(os.path.join(out, run_name(beta, seed)))
            if ep != epochs:
                raise MinivaeError(f"{run_name(beta, seed)} stopped at epoch {ep} of {epochs}; "
                                   "run the sweep again to finish it")
            runs[seed] = m
        row = {"beta": beta, "split": split, "epochs": epochs, "runs": runs}
        for k in SUMMARY_KEYS:
            v = [runs[s][k] for s in seeds]
            mean = sum(v) / len(v)
            sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
            row[k] = {"mean": mean, "sd": sd}
        rows.append(row)
    return rows


def write_summary(rows, out):
    from .checkpoint import atomic_write
    n = len(rows[0]["runs"])
    atomic_write(os.path.join(out, "summary.json"),
                 lambda f: f.write(json.dumps(rows, indent=1).encode()))
    split = rows[0]["split"]
    lines = [f"| beta | {split} ELBO | distortion | KL |", "|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]['mean']:.2f} +- {r[k]['sd']:.2f}" for k in SUMMARY_KEYS]
        lines.append(f"| {r['beta']:g} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Final epoch ({rows[0]['epochs']}), nats per example, mean +- sample standard "
                 f"deviation over {n} seed{'s' if n > 1 else ''}.")
    text = "\n".join(lines) + "\n"
    atomic_write(os.path.join(out, "summary.md"), lambda f: f.write(text.encode()))
    save_summary_figure(rows, os.path.join(out, "summary.png"))
    return text


def save_summary_figure(rows, path):
    from .plots import _plt
    plt = _plt()
    betas = [r["beta"] for r in rows]
    log_x = min(betas) > 0 and max(betas) / min(betas) >= 4
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    names = {"elbo": f"{rows[0]['split']} ELBO", "distortion": "distortion -E log p(x|z)",
             "kl": "KL(q(z|x) || p(z))"}
    for ax, k in zip(axes, SUMMARY_KEYS):
        for r in rows:
            v = [m[k] for m in r["runs"].values()]
            ax.plot([r["beta"]] * len(v), v, "o", color="0.6", ms=4, zorder=2)
        ax.errorbar(betas, [r[k]["mean"] for r in rows], yerr=[r[k]["sd"] for r in rows],
                    color="C0", marker="s", capsize=3, zorder=3, label="mean +- sd over seeds")
        ax.set_xlabel("beta")
        ax.set_title(names[k] + " (nats)", fontsize=9)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(betas)
        ax.set_xticklabels([f"{b:g}" for b in betas])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    n = len(rows[0]["runs"])
    fig.suptitle(f"sweep: final epoch {rows[0]['epochs']}, {n} seed{'s' if n > 1 else ''} per "
                 "beta (grey: each run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_sweep(args, comm=None):
    betas = parse_list(args.beta, float, "beta")
    seeds = [int(s) for s in parse_list(args.seeds, int, "seeds")]
    train_argv = list(args.train_options)
    if train_argv[:1] == ["--"]:
        train_argv = train_argv[1:]
    root = comm is None or comm.root

    def log(msg):
        print(msg, file=sys.stderr, flush=True)
    status = run_sweep(betas, seeds, args.out, train_argv, comm, log)
    if status == 130 and root:
        print(f"minivae: sweep interrupted; run the same command again to continue it",
              file=sys.stderr)
    return status
