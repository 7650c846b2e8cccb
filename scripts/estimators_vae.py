"""Claims E1-E5: the score function against reparameterisation on a real VAE encoder, and a VAE
with Bernoulli latents trained by the score function or the Concrete relaxation (issue 15).

    python scripts/estimators_vae.py [--out DIR] [--quick] [--seed S]

prints one row per claim (id, statement, the numbers behind it, verified / NOT verified), writes
DIR/claims.json (every number) and the figures DIR/variance_vs_S.png, DIR/curves.png and
DIR/discrete.png, and exits with status 1 if any claim is not verified.  --quick: a smaller
model, fewer samples and steps (the tests run it); the full run takes ~10 minutes on 2 cores.

The claims, their model and sizes are in scripts/claims/estimators_vae.py (read beside
docs/estimators.md); the table and the record in scripts/claims/harness.py.
"""
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the package first: it sets one BLAS thread before NumPy loads
from claims import harness  # noqa: E402
from claims.estimators_vae import CLAIMS, QUICK, Context, Sizes  # noqa: E402


def main(argv=None):
    p = harness.parser(__doc__, os.path.join("runs", "estimators_vae"), "claims.json")
    p.add_argument("--seed", type=harness.seed, default=0, help="seed of the data, the models "
                   "and every draw")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    with harness.one_blas_thread():
        ctx = Context(QUICK if args.quick else Sizes(), args.seed)
        t0 = time.perf_counter()
        results = harness.run_claims(CLAIMS, ctx)
        figures = harness.draw_figures(results, args.out)
        wall = time.perf_counter() - t0
    rec = harness.record(dict(
        command=harness.command("scripts/estimators_vae.py", argv), quick=args.quick,
        seed=args.seed, z_tol=harness.Z_TOL, sizes=dataclasses.asdict(ctx.n), wall_seconds=wall,
        load_average=harness.load_average()), results, figures)
    return harness.finish(args.out, "claims.json", rec, results, wall)


if __name__ == "__main__":
    sys.exit(main())
