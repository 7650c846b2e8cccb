"""Where one CPU training step spends its time: microseconds per part, one JSON object.

    python scripts/bench_profile.py                          # 784-400-20 ReLU, batch 128
    python scripts/bench_profile.py --arch 784-200-200-50:tanh --batch 32 --steps 2000
    python scripts/bench_profile.py --out docs/results/bench/profile.json   # all standard cases

The step is the benchmark's (scripts/bench.py): batch gathered and noise drawn into
preallocated buffers, model.forward_backward(xb, eps), opt.step().  It runs twice:

  plain         --steps steps as they are: the step's time (median of 5 blocks).
  instrumented  the same steps with every part timed by perf_counter around it: each GEMM
                (named by layer and role: fwd, dW, dX, and its shape), each fused kernel,
                Adam, the batch gather and the noise draw.  ``other`` is the instrumented
                step's time minus its parts: Python dispatch, the small NumPy calls between
                them (means, views), and the instrumentation itself (about 0.2 us a part).

Also reported: the same GEMMs timed alone at their shapes (scripts/bench.py's floor), so
``gemm_in_step / gemm_alone`` says how much slower the GEMMs run inside the step (caches
shared with the kernels and Adam, the BLAS threads' hand-offs).  Run on an idle machine and
read the ratios; the load average is recorded.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (the benchmark's model, data and GEMM floor)


class _Clock:
    """Sums of perf_counter intervals per named part."""

    def __init__(self):
        self.t = {}
        self.n = {}
        self.on = False

    def add(self, name, dt):
        if self.on:
            self.t[name] = self.t.get(name, 0.0) + dt
            self.n[name] = self.n.get(name, 0) + 1


def _timed(clock, name, fn):
    pc = time.perf_counter

    def wrapper(*a, **k):
        t0 = pc()
        r = fn(*a, **k)
        clock.add(name, pc() - t0)
        return r
    return wrapper


class _TimedXP:
    """numpy, with matmul timed and named by the operands' shapes (the FusedMLP's GEMMs)."""

    def __init__(self, np, clock, names):
        self._np, self._clock, self._names = np, clock, names

    def matmul(self, a, b, out=None):
        t0 = time.perf_counter()
        r = self._np.matmul(a, b, out=out)
        key = (a.shape, b.shape, not a.flags.c_contiguous, not b.flags.c_contiguous)
        self._clock.add(self._names.get(key, f"GEMM {a.shape}@{b.shape}"), time.perf_counter() - t0)
        return r

    def __getattr__(self, k):
        return getattr(self._np, k)


def gemm_names(dims, B):
    """(a.shape, b.shape, a transposed, b transposed) -> 'GEMM enc.0 fwd (128x784 @ 784x400)'."""
    enc, dec = bench.layer_shapes(dims)
    names = {}
    for prefix, layers in (("enc", enc), ("dec", dec)):
        for j, (i, o) in enumerate(layers):
            tag = f"GEMM {prefix}.{j}"
            names[((B, i), (i, o), False, False)] = f"{tag} fwd ({B}x{i} @ {i}x{o})"
            names[((i, B), (B, o), True, False)] = f"{tag} dW ({i}x{B} @ {B}x{o})"
            names[((B, o), (o, i), False, True)] = f"{tag} dX ({B}x{o} @ {o}x{i})"
    return names


def profile(model_spec, B, steps, seed=0):
    import numpy as np
    import minivae.kernels as K
    from minivae.optim import Adam
    dims, _, channels = bench.parse_model(model_spec)
    if channels is not None:
        raise SystemExit("bench_profile: MLP models only (DIMS:ACT)")
    model = bench.make_model(model_spec, seed)
    opt = Adam(model.buffer, lr=1e-3)
    train = bench.synthetic(1000, bench.N_TRAIN)
    Z = dims[-1]
    n_batches = bench.N_TRAIN // B
    order = np.random.default_rng(seed).permutation(bench.N_TRAIN)
    noise = np.random.default_rng([seed, 2])
    xb = np.empty((B, bench.N_PIX), np.float32)
    eps = np.empty((1, B, Z), np.float32)
    clock = _Clock()
    state = {"s": 0}

    def gather():
        s = state["s"] % n_batches
        state["s"] += 1
        np.take(train, order[s * B:(s + 1) * B], axis=0, out=xb, mode="clip")

    def draw():
        noise.standard_normal(out=eps, dtype=np.float32)

    def step():
        gather()
        draw()
        model.forward_backward(xb, eps)
        opt.step()

    def blocks(n, reps=5):
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            out.append((time.perf_counter() - t0) / n)
        return statistics.median(out)

    for _ in range(max(20, steps // 10)):           # compile, make the workspaces, warm up
        step()
    plain = blocks(steps)

    # instrument: the kernels and Adam by name, the plans' GEMMs through a timed numpy
    names = gemm_names(dims, B)
    saved = {}
    for name in ("bias_act_forward", "bias_add", "act_backward", "reparam_kl",
                 "reparam_kl_backward", "bernoulli_nll_grad", "adam_update"):
        saved[name] = getattr(K, name)
        label = "Adam (flat buffer)" if name == "adam_update" else f"kernel {name}"
        setattr(K, name, _timed(clock, label, saved[name]))
    for key, ws in model._workspaces.items():
        if hasattr(ws, "linears"):
            ws.xp = _TimedXP(np, clock, names)
    gather_t, draw_t = gather, draw
    gather = _timed(clock, "batch gather (np.take)", gather_t)
    draw = _timed(clock, "noise draw", draw_t)
    try:
        clock.on = True
        t0 = time.perf_counter()
        n_inst = 5 * steps
        for _ in range(n_inst):
            step()
        inst = (time.perf_counter() - t0) / n_inst
        clock.on = False
    finally:
        for name, fn in saved.items():
            setattr(K, name, fn)
        for ws in model._workspaces.values():
            if hasattr(ws, "linears"):
                ws.xp = np
    parts = {k: round(v / n_inst * 1e6, 2) for k, v in sorted(clock.t.items())}
    gemm_in = sum(v for k, v in parts.items() if k.startswith("GEMM"))
    flops, alone = bench.gemm_floor(bench.step_gemms(dims, B))
    parts_sum = sum(parts.values())
    return dict(model=model_spec, batch=B, steps_timed=steps,
                step_us=round(plain * 1e6, 1), instrumented_step_us=round(inst * 1e6, 1),
                parts_us=parts, other_us=round(inst * 1e6 - parts_sum, 1),
                gemm_in_step_us=round(gemm_in, 1), gemm_alone_us=round(alone * 1e6, 1),
                gemm_in_step_over_alone=round(gemm_in / (alone * 1e6), 3),
                step_over_gemm_alone=round(plain / alone, 3),
                non_gemm_us=round(plain * 1e6 - gemm_in, 1))


def summary(res):
    """A markdown table of the profiles: one column per (model, batch), microseconds per step."""
    profs = res["profiles"]
    kinds = sorted({k for p in profs for k in p["parts_us"] if not k.startswith("GEMM")})
    head = "| us per step | " + " | ".join(f"{p['model'].split(':')[0]} B={p['batch']}"
                                           for p in profs) + " |"
    rows = [head, "|---" * (len(profs) + 1) + "|"]

    def row(name, values):
        rows.append(f"| {name} | " + " | ".join(values) + " |")
    row("step (plain)", [f"{p['step_us']:.0f}" for p in profs])
    row("GEMMs inside the step", [f"{p['gemm_in_step_us']:.0f}" for p in profs])
    row("the same GEMMs alone (floor)", [f"{p['gemm_alone_us']:.0f}" for p in profs])
    for k in kinds:
        row(k, [f"{p['parts_us'].get(k, 0):.0f}" for p in profs])
    row("other (Python, small NumPy calls, timers)", [f"{p['other_us']:.0f}" for p in profs])
    row("step / floor", [f"{p['step_over_gemm_alone']:.2f}" for p in profs])
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", nargs="+", default=None,
                   help="models as DIMS:ACT (default: 784-400-20:relu; with --out both standard "
                        "models)")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default 128; with --out 32 128 1024)")
    p.add_argument("--steps", type=int, default=300, help="steps per timed block")
    p.add_argument("--out", help="write the JSON here as well")
    a = p.parse_args()
    archs = a.arch or (["784-400-20:relu", "784-200-200-50:tanh"] if a.out else ["784-400-20:relu"])
    batches = a.batch or ([32, 128, 1024] if a.out else [128])
    from minivae import threads
    res = dict(load_avg_start=os.getloadavg(), cores=os.cpu_count(), profiles=[])
    for arch in archs:
        for B in batches:
            steps = max(20, a.steps * 128 // B)
            r = profile(arch, B, steps)
            res["profiles"].append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    res["load_avg_end"] = os.getloadavg()
    res["threads"] = threads.describe()          # the policy's decision, made by the first model
    text = json.dumps(res, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
        with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
            f.write(summary(res) + "\n")
    print(summary(res), file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
