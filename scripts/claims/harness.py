"""The claims harness: a claim is an id, a statement and a check; the harness runs the checks and
gives the table, the JSON record and the exit status (1 when any claim is NOT verified).

A group of claims (one module of this package) registers its checks next to their code:

    CLAIMS = []

    @claim(CLAIMS, "C6", "ELBO = log p(x) - KL(q || p(z|x))")
    def claim_c6(ctx):
        ...                                        # the check: numbers, and a verdict on them
        return Verdict(ok, "the numbers behind it, short, for the table", dict(every=number),
                       figure=Figure("elbo_gap", figure_elbo_gap, dict(rows=rows)))

and a command (scripts/derivation.py, scripts/estimators_vae.py, scripts/disentanglement.py)
parses its flags with `parser`, calls `run_claims(claims, ctx)` and ends with `finish`: the
record written to DIR/<name>.json, the table printed, the exit status returned.  A check that
raises is a claim NOT verified (its traceback in the record), never a lost table.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import textwrap
import time
import traceback
from typing import Callable, Optional

import numpy as np

# A Monte Carlo number agrees with its exact value within Z_TOL standard errors: two-sided
# false alarm 7e-6 per check under the normal approximation.
Z_TOL = 4.5


@dataclasses.dataclass
class Figure:
    """A figure a check asks for: drawn as DIR/<name>.png by draw(path, **data) after the run."""
    name: str
    draw: Callable
    data: dict


@dataclasses.dataclass
class Verdict:
    """What a check returns: verified or not, the numbers behind it (short, for the table; all
    of them, for the record) and optionally a figure."""
    verified: bool
    summary: str
    numbers: dict
    figure: Optional[Figure] = None


@dataclasses.dataclass
class Claim:
    id: str
    statement: str
    check: Callable                  # check(*args) -> Verdict


@dataclasses.dataclass
class Result:
    """A claim after its check ran: one row of the table, one entry of the record."""
    id: str
    statement: str
    verified: bool
    summary: str
    numbers: dict
    seconds: float = 0.0
    figure: Optional[Figure] = None


def claim(registry, cid, statement):
    """Decorator: register the function as the check of claim `cid` (it stays callable)."""
    def register(check):
        registry.append(Claim(cid, statement, check))
        return check
    return register


def run_claims(claims, *args, log=sys.stderr):
    """Run each claim's check(*args) in order, timed, with a progress line before and after."""
    results = []
    for c in claims:
        t0 = time.perf_counter()
        print(f"[{c.id}] {c.statement} ...", file=log, flush=True)
        try:
            v = c.check(*args)
        except Exception as e:          # a crash is a claim not verified, not a lost table
            traceback.print_exc()
            v = Verdict(False, f"error: {type(e).__name__}: {e}",
                        dict(error=traceback.format_exc()))
        r = Result(c.id, c.statement, bool(v.verified), v.summary, v.numbers,
                   time.perf_counter() - t0, v.figure)
        print(f"[{c.id}] {'verified' if r.verified else 'NOT verified'} ({r.seconds:.1f} s)",
              file=log, flush=True)
        results.append(r)
    return results


def draw_figures(results, out):
    """Draw the figures the checks asked for into `out`; their file names, in claim order."""
    written = []
    for r in results:
        if r.figure is not None:
            r.figure.draw(os.path.join(out, f"{r.figure.name}.png"), **r.figure.data)
            written.append(f"{r.figure.name}.png")
    return written


# ------------------------------------------------------------------------------------------
# formats: the table, numbers in it, the record

def table(results, width=78):
    """One row per claim: id, result, statement, the numbers (wrapped under themselves)."""
    sw = max(len(r.statement) for r in results)
    head = f"{'claim':<5} {'result':<12} {'statement':<{sw}} numbers"
    lines = [head, "-" * (len(head) - len("numbers") + width)]
    for r in results:
        wrapped = textwrap.wrap(r.summary, width) or [""]
        result = "verified" if r.verified else "NOT verified"
        lines.append(f"{r.id:<5} {result:<12} {r.statement:<{sw}} {wrapped[0]}")
        lines += [f"{'':<{5 + 1 + 12 + 1 + sw}} {w}" for w in wrapped[1:]]
    return "\n".join(lines)


def fmt(v, digits=3):
    """A number in a short form for the table."""
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.{max(digits - 1, 1)}e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.{digits}g}"


def jsonable(obj):
    """numpy -> lists and floats; inf / nan as strings (the record stays strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    return obj


def command(script, argv):
    """The command line as the record states it."""
    return " ".join([script, *(argv if argv is not None else sys.argv[1:])])


def record(head, results, figures, **tail):
    """The JSON record: head (command, sizes, ...), the verdicts and every number, tail, figures."""
    return dict(**head, all_verified=all(r.verified for r in results),
                claims=[dict(id=r.id, statement=r.statement, verified=r.verified,
                             summary=r.summary, seconds=r.seconds, numbers=r.numbers)
                        for r in results],
                **tail, figures=figures)


def load_average():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def finish(out, name, rec, results, wall):
    """Write DIR/name, print the table and the count; the exit status (1 if any NOT verified)."""
    path = os.path.join(out, name)
    with open(path, "w") as f:
        json.dump(jsonable(rec), f, indent=1)
    print(table(results))
    n_ok = sum(r.verified for r in results)
    load = load_average()
    print(f"\n{n_ok}/{len(results)} verified in {wall:.1f} s (load average "
          f"{', '.join(f'{v:.2f}' for v in load) if load else 'n/a'}); wrote "
          + ", ".join([path, *(os.path.join(out, f) for f in rec["figures"])]))
    return 0 if n_ok == len(results) else 1


# ------------------------------------------------------------------------------------------
# the command line

def parser(doc, out, what):
    """--out DIR (default `out`) and --quick; `what` names the record, for --help."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=out, help=f"folder for {what} and the figures (default {out})")
    p.add_argument("--quick", action="store_true",
                   help="the same checks at smaller sizes (the tests run it)")
    return p


def seed(text):
    """argparse type of --seed: an integer >= 0."""
    s = int(text)
    if s < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return s


def one_blas_thread():
    """threadpoolctl's limit to one BLAS thread for the run, when it is installed.  (The package
    sets OPENBLAS_NUM_THREADS=1 on import, which acts only if NumPy is not loaded yet: a script
    run; this covers an import after NumPy, as in the tests.)"""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def pyplot():
    """matplotlib's pyplot on the Agg backend, imported when a figure is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path, dpi=110):
    """Lay the figure out, write it to path (PNG) and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
