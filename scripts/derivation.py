"""Every claim C1-C12 of the VAE derivation (issue 3), run as a falsifiable numerical check.

    python scripts/derivation.py [--out DIR] [--quick] [--seed S] [--only C3,C9]

prints one row per claim (id, statement, the numbers behind it, verified / NOT verified), writes
DIR/claims.json (every number) and the figures DIR/*.png, and exits with status 1 if any claim is
not verified.  --quick runs the same checks on fewer samples (wider standard errors, same
tolerances) and a shorter beta sweep; --seed changes every Monte Carlo draw and the VAE training.

The claims live in scripts/claims/, one module per group, each beside the section of docs/ that
derives it: importance.py (C1-C4), bounds.py (C5, IWAE, C6, C7), beta.py (C8), estimators.py
(C9-C12); what they share (the two linear-Gaussian models with exact answers, the sizes, the
tolerance rules) is in context.py, the table and the record in harness.py.
"""

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the package first: it sets one BLAS thread before NumPy loads
from claims import beta, bounds, estimators, harness, importance  # noqa: E402
from claims.context import QUICK, ROUNDOFF, Context, Sizes  # noqa: E402

CLAIMS = {c.id: c for group in (importance, bounds, beta, estimators) for c in group.CLAIMS}
ORDER = list(CLAIMS)                     # the table's rows; a claim's row also seeds its draws


def parse(argv):
    p = harness.parser(__doc__, os.path.join("runs", "derivation"), "claims.json")
    p.add_argument("--seed", type=harness.seed, default=0, help="seed of every Monte Carlo draw")
    p.add_argument("--only", default=None,
                   help=f"comma-separated claim ids to run (default all: {','.join(ORDER)})")
    args = p.parse_args(argv)
    if args.only:
        ids = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = [s for s in ids if s not in CLAIMS]
        if bad:
            p.error(f"--only: unknown claim {', '.join(bad)}; choose from {', '.join(ORDER)}")
        args.only = ids
    return args


def main(argv=None):
    args = parse(argv)
    with harness.one_blas_thread():
        os.makedirs(args.out, exist_ok=True)
        ctx = Context(QUICK if args.quick else Sizes(), args.seed, ORDER)
        t0 = time.perf_counter()
        results = harness.run_claims([c for c in CLAIMS.values()
                                      if args.only is None or c.id in args.only], ctx)
        figures = harness.draw_figures(results, args.out)
        wall = time.perf_counter() - t0
    rec = harness.record(dict(
        command=harness.command("scripts/derivation.py", argv), quick=args.quick, seed=args.seed,
        z_tol=harness.Z_TOL, roundoff_factor=ROUNDOFF, sizes=dataclasses.asdict(ctx.n),
        wall_seconds=wall, models=ctx.models()), results, figures)
    return harness.finish(args.out, "claims.json", rec, results, wall)


if __name__ == "__main__":
    sys.exit(main())
