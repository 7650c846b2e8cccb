"""Per-example variance against one sigma: Kingma & Welling's Gaussian decoder on a small grey
faces dataset (scripts/make_faces.py, 28x20 like the Frey Faces), by the command line.

    python scripts/faces_study.py --out runs/faces-study [--epochs 40]

Trains three 560-200-10 ReLU VAEs with `minivae train` on the same 2,000 generated faces
(test: 400 others, seed 1), differing only in the decoder:
    per-example   --learn-sigma per-example (sigma floor 1/256)
    shared        --learn-sigma shared      (one sigma for every pixel and image, learned)
    fixed         --learn-sigma fixed       (sigma = 0.1)
each with --gaussian-mean sigmoid and every sigma starting at 0.1,
then `minivae eval RUN --iwae 1000 --json` on every test image.  The claim checked, with a
verdict: the per-example decoder's test ELBO is above each homoscedastic decoder's by more than
3 standard errors of the paired difference (the same test images; the per-image ELBOs are
estimated with 10 samples each).  Writes results.json and keeps each run's figures.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DECODERS = {                        # every sigma starts at 0.1
    "per-example": ["--learn-sigma", "per-example", "--sigma", "0.1"],
    "shared": ["--learn-sigma", "shared", "--sigma", "0.1"],
    "fixed": ["--sigma", "0.1"],
}


def per_image_elbo(run, test, samples=10, seed=7):
    """(N,) ELBO of every test image, the mean of `samples` one-sample estimates."""
    sys.path.insert(0, ROOT)
    from minivae.backend import make_rng
    from minivae.data import Dataset
    from minivae.rundir import load_run
    model = load_run(run)[0]
    x = Dataset.from_arrays(np.load(test)).train
    rng = make_rng(seed, model.xp)
    return np.mean([model.elbo(x, rng=rng).elbo for _ in range(samples)], axis=0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the data, the runs and results.json")
    p.add_argument("--epochs", type=int, default=100, help="epochs per run")
    p.add_argument("--iwae", type=int, default=1000, help="K of the final log p(x) estimate")
    p.add_argument("--n-train", type=int, default=2000, help="generated training faces")
    p.add_argument("--n-test", type=int, default=400, help="generated test faces")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    train, test = os.path.join(a.out, "train.npy"), os.path.join(a.out, "test.npy")
    make = os.path.join(ROOT, "scripts", "make_faces.py")
    if not os.path.exists(train):
        subprocess.run([sys.executable, make, "--out", train, "--n", str(a.n_train)], check=True)
        subprocess.run([sys.executable, make, "--out", test, "--n", str(a.n_test), "--seed", "1"],
                       check=True)
    load = os.getloadavg()[0]
    results = {"data": {"train": train, "test": test, "image_shape": [28, 20]},
               "epochs": a.epochs, "load_average_1min_at_start": load, "runs": {}}
    elbos = {}
    for name, opts in DECODERS.items():
        run = os.path.join(a.out, name)
        t0 = time.time()
        if not os.path.exists(os.path.join(run, "checkpoint.npz")):
            subprocess.run([sys.executable, "-m", "minivae", "train", "--dataset", train,
                            "--test", test, "--likelihood", "gaussian", "--gaussian-mean",
                            "sigmoid", *opts, "--hidden", "200", "--latent-dim", "10",
                            "--epochs", str(a.epochs), "--out", run], check=True, cwd=ROOT)
        wall = time.time() - t0
        ev = subprocess.run([sys.executable, "-m", "minivae", "eval", run, "--iwae",
                             str(a.iwae), "--json", "--no-progress"], check=True, cwd=ROOT,
                            capture_output=True, text=True).stdout
        res = json.loads(ev.splitlines()[-1])
        elbos[name] = per_image_elbo(run, test)
        res.update(train_wall_s=round(wall, 1),
                   elbo_10_samples=round(float(elbos[name].mean()), 3),
                   elbo_10_samples_stderr=round(float(elbos[name].std(ddof=1)
                                                      / len(elbos[name]) ** 0.5), 3))
        results["runs"][name] = res
        print(name, {k: res[k] for k in ("elbo", "logpx", "logpx_stderr", "elbo_bits_per_dim",
                                        "logpx_bits_per_dim")})
    claims = []
    for other in ("shared", "fixed"):
        d = elbos["per-example"] - elbos[other]
        se = float(d.std(ddof=1) / len(d) ** 0.5)
        ok = bool(d.mean() > 3 * se)
        claims.append({"claim": f"per-example test ELBO > {other} test ELBO by > 3 SE (paired)",
                       "difference_nats": round(float(d.mean()), 3), "stderr": round(se, 3),
                       "verdict": "verified" if ok else "NOT verified"})
        print(claims[-1])
    results["claims"] = claims
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
