"""The memory estimate of `minivae train` (minivae/memory.py) against the peak resident memory of
real runs.

Each configuration is one `minivae train` process (one epoch on 500 built-in shapes images, 1,000 test images,
figures off) whose peak resident set (ru_maxrss of os.wait4) is measured; the same run with a
tiny model gives what the estimate leaves out (interpreter, NumPy, Numba: `baseline`).  The
claim checked: for every configuration, estimate / (peak - baseline) lies in [1, 3], i.e. the
estimate is an upper bound of what the sizes a user picks cost, and not a wild one.

    python scripts/memory_estimate.py [--out docs/results/memory_estimate.json]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

N_TRAIN, N_TEST = 500, 1000
CHILD = ("import sys; import minivae.data.datasets as d; "
         f"d.SHAPES_TRAIN, d.SHAPES_TEST = {N_TRAIN}, {N_TEST}; from minivae import cli; "
         "cli._figures = lambda *a: None; sys.exit(cli.main(sys.argv[1:]))")

CONFIGS = {
    "baseline (hidden 8)": ["--hidden", "8", "--latent-dim", "2"],
    "hidden 2000": ["--hidden", "2000"],
    "hidden 2000,2000": ["--hidden", "2000,2000"],
    "hidden 1000, batch 2000": ["--hidden", "1000", "--batch-size", "2000"],
    "hidden 500, iwae k 50": ["--hidden", "500", "--objective", "iwae", "--k", "50"],
    "valid-size 40000": ["--hidden", "8", "--latent-dim", "2", "--valid-size", "40000"],
    "hidden 1500, sgd, float64": ["--hidden", "1500", "--optimizer", "sgd", "--dtype", "float64"],
}


def estimate(argv):
    """The estimate cmd_train makes for these options (the same function, the same inputs)."""
    import numpy as np
    from minivae import cli, memory
    args = cli.build_parser().parse_args(["train", *argv])
    cli._resolve(args)
    parts = memory.estimate(1024, args.hidden, args.latent_dim, np.dtype(args.dtype).itemsize,
                            args.optimizer, args.batch_size, args.samples,
                            n_images=N_TRAIN + N_TEST + args.valid_size)
    return sum(parts.values()), parts


def peak_rss(argv, out):
    p = subprocess.Popen([sys.executable, "-c", CHILD, "train", *argv, "--epochs", "1",
                          "--no-progress", "--out", out], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    err = p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: {err[-500:]}")
    return usage.ru_maxrss * 1024                    # Linux: kilobytes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results",
                                                  "memory_estimate.json"))
    a = ap.parse_args()
    import tempfile
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, argv) in enumerate(CONFIGS.items()):
            peak = peak_rss(argv, os.path.join(tmp, f"run{i}"))
            est, parts = estimate(argv)
            if base is None:
                base = peak - est                      # what the estimate leaves out
            used = peak - base
            ratio = est / used if used > 0 else None
            ok = ratio is not None and 1 <= ratio <= 3
            rows.append({"config": name, "argv": argv, "estimate_mb": round(est / 1e6, 1),
                         "peak_rss_mb": round(peak / 1e6, 1), "peak_less_baseline_mb":
                         round(used / 1e6, 1), "ratio": None if ratio is None else round(ratio, 2),
                         "parts_mb": {k: round(v / 1e6, 1) for k, v in parts.items()},
                         "verdict": "verified" if ok or i == 0 else "NOT verified"})
            print(f"{name:28s} estimate {est / 1e6:8.1f} MB   peak {peak / 1e6:8.1f} MB   "
                  f"peak-baseline {used / 1e6:8.1f} MB   ratio "
                  f"{'-' if ratio is None else f'{ratio:.2f}'}   {rows[-1]['verdict']}")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    result = {"claim": "estimate / (peak RSS - baseline) in [1, 3] for every configuration",
              "baseline_mb": round(base / 1e6, 1), "load_average": load, "runs": rows,
              "verdict": ("verified" if all(r["verdict"] == "verified" for r in rows)
                          else "NOT verified")}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"claim {result['claim']}: {result['verdict']} (load average {' '.join(load)}); "
          f"-> {a.out}")


if __name__ == "__main__":
    main()
