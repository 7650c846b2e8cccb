"""The beta-VAE claims of the derivation, run as falsifiable checks on the built-in shapes (issue 14).

    python scripts/disentanglement.py [--out DIR] [--quick] [--seeds N]

trains one VAE per beta in {1, 2, 4, 8, 16} and one capacity-controlled VAE (Burgess et al.
2018), each with 3 seeds, measures on held-out data the rate (KL to the prior), the distortion
(-E_q log p(x|z)), MIG, the FactorVAE score, the total correlation of the aggregate posterior and
the active units, prints one row per claim D1-D4 (id, verified / NOT verified, the numbers
behind it), writes DIR/disentanglement.json (every number, per seed) and the figures DIR/*.png,
and exits with status 1 if a claim is not verified.  --quick runs the same checks on a tiny
version (2 seeds, betas 1 and 16, a few hundred images), for the test suite.

The claims, the sizes and the tolerances (T_CRIT standard errors of the seed-to-seed spread) are
in scripts/claims/disentanglement.py (read beside docs/disentanglement.md); the table and the
record in scripts/claims/harness.py.
"""
import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the package first: it sets one BLAS thread before NumPy loads
from claims import harness  # noqa: E402
from claims.disentanglement import (CLAIMS, METRICS, QUICK, Sizes, configs,  # noqa: E402
                                    figure_sweep, results_table, stats, t_crit,
                                    train_and_measure)

from minivae.data import shapes  # noqa: E402


def seeds(text):
    """argparse type of --seeds: at least 2 (the tolerances need a spread)."""
    s = int(text)
    if s < 2:
        raise argparse.ArgumentTypeError(
            f"must be at least 2 (the tolerances need a spread), got {s}")
    return s


def main(argv=None):
    p = harness.parser(__doc__, os.path.join("runs", "disentanglement"), "disentanglement.json")
    p.add_argument("--seeds", type=seeds, default=None, help="seeds per configuration (>= 2)")
    args = p.parse_args(argv)
    n = QUICK if args.quick else Sizes()
    if args.seeds:
        n = dataclasses.replace(n, seeds=args.seeds)
    os.makedirs(args.out, exist_ok=True)
    with harness.one_blas_thread():
        t0 = time.perf_counter()
        res, figures = train_and_measure(n, args.out)
        T = t_crit(n.seeds)
        results = harness.run_claims(CLAIMS, n, res, T)
        figure_sweep(os.path.join(args.out, "sweep.png"), n, res)
        wall = time.perf_counter() - t0
    rec = harness.record(dict(
        command=harness.command("scripts/disentanglement.py", argv), quick=args.quick,
        sizes=dataclasses.asdict(n), t_crit=T, wall_seconds=wall,
        load_average=harness.load_average(), factors=list(shapes.FACTORS),
        grid=shapes.DSPRITES_LEVELS), results, ["sweep.png", *figures],
        summary={name: {key: dict(zip(("mean", "sd", "n"), stats(res, name, key)))
                        for key in METRICS} for name, _ in configs(n)},
        runs=res)
    print(results_table(n, res))
    print()
    return harness.finish(args.out, "disentanglement.json", rec, results, wall)


if __name__ == "__main__":
    sys.exit(main())
