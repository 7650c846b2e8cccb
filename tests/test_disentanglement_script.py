"""scripts/disentanglement.py: the --quick run in a fresh process writes the JSON, the table and
the figures, and its verdicts are those of the stated checks recomputed here from the per-seed
numbers; the checks themselves on synthetic results whose verdict is known (so they can fail)."""
import math

import pytest

from claims import disentanglement as dis           # scripts/claims/ (tests/conftest.py)

QUICK_RUN = ("disentanglement.py", "disentanglement.json")      # the quick_run fixture


def test_quick_run_reports_every_claim_and_its_exit_status(quick_run):
    proc, out, rec = quick_run
    assert [c["id"] for c in rec["claims"]] == ["D1", "D2", "D3", "D4"]
    rows = [line.split() for line in proc.stdout.splitlines() if line[:2] in ("D1", "D2", "D3",
                                                                           "D4")]
    verdicts = {r[0]: r[1] == "verified" for r in rows}
    assert verdicts == {c["id"]: c["verified"] for c in rec["claims"]}
    for r in rows:
        assert r[1] == "verified" or (r[1], r[2]) == ("NOT", "verified")
    assert proc.returncode == (0 if rec["all_verified"] else 1), proc.stderr[-2000:]
    assert rec["all_verified"] == all(c["verified"] for c in rec["claims"])
    assert "Traceback" not in proc.stderr


def test_quick_run_verdicts_follow_from_the_per_seed_numbers(quick_run):
    """Recompute D1-D4 from rec['runs'] with the stated rule (means, seed sd, T_CRIT SE)."""
    _, _, rec = quick_run
    runs, T = rec["runs"], rec["t_crit"]
    betas = rec["sizes"]["betas"]
    assert T == dis.T_TABLE[2 * (rec["sizes"]["seeds"] - 1)]

    def ms(name, key):
        v = [r[key] for r in runs[name]]
        m = sum(v) / len(v)
        return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)), len(v)

    def d(a, b, key):
        (ma, sa, na), (mb, sb, nb) = ms(a, key), ms(b, key)
        return mb - ma, math.sqrt(sa ** 2 / na + sb ** 2 / nb)

    names = [f"beta{b:g}" for b in betas]
    d1 = all(d(a, b, "rate")[0] < -T * d(a, b, "rate")[1]
             and d(a, b, "distortion")[0] > T * d(a, b, "distortion")[1]
             for a, b in zip(names, names[1:]))
    d2 = True
    for key in ("tc", "tc_loo"):
        tc, tse = d(names[0], names[-1], key)
        d2 = d2 and tc < -T * tse and not any(d(a, b, key)[0] > T * d(a, b, key)[1]
                                              for a, b in zip(names, names[1:]))
    best = max(range(len(names)), key=lambda i: ms(names[i], "mig")[0])
    rise, se = d(names[0], names[best], "mig")
    d3 = best > 0 and rise > T * se
    high = max([f"beta{b:g}" for b in betas if b >= 4], key=lambda m: ms(m, "mig")[0])
    d4 = (d(high, "capacity", "mig")[0] >= -T * d(high, "capacity", "mig")[1]
          and d(high, "capacity", "distortion")[0] < -T * d(high, "capacity", "distortion")[1])
    assert {c["id"]: c["verified"] for c in rec["claims"]} == dict(D1=d1, D2=d2, D3=d3, D4=d4)


def test_quick_run_writes_figures_and_the_summary(quick_run):
    _, out, rec = quick_run
    names = [n for n, _ in dis.configs(dis.QUICK)]
    assert set(rec["runs"]) == set(names) == set(rec["summary"])
    assert all(len(rec["runs"][n]) == dis.QUICK.seeds for n in names)
    for n in names:
        for key in dis.METRICS:
            assert set(rec["summary"][n][key]) == {"mean", "sd", "n"}
        r = rec["runs"][n][0]
        assert 0 <= r["mig"] <= 1 and 0 <= r["factorvae"] <= 1 and r["rate"] >= 0
        assert len(r["per_latent_kl"]) == dis.QUICK.latent
    want = {"sweep.png"} | {f"{k}_{n}.png" for n in names for k in ("traversals", "mi")}
    assert set(rec["figures"]) == want
    for f in want:
        with open(out / f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert isinstance(rec["load_average"], list) and rec["wall_seconds"] > 0


# ----------------------------------------------------------------------------- the checks
def fake(values):
    """results {name: [seed dicts]} from {name: {key: [per seed]}}."""
    out = {}
    for name, d in values.items():
        seeds = len(next(iter(d.values())))
        out[name] = [{k: v[i] for k, v in d.items()} for i in range(seeds)]
    return out


SIZES = dis.Sizes(betas=(1.0, 4.0, 16.0), seeds=3)
T = dis.t_crit(3)


def sweep(rate, dist, tc, mig, cap=None, tc_loo=None):
    tc_loo = tc_loo or tc
    vals = {f"beta{b:g}": dict(rate=r, distortion=d, tc=t, tc_loo=tl, mig=m, factorvae=[0.5] * 3)
            for b, r, d, t, tl, m in zip(SIZES.betas, rate, dist, tc, tc_loo, mig)}
    vals["capacity"] = cap or dict(rate=[5, 5.1, 4.9], distortion=[100, 101, 99], tc=[1, 1, 1],
                                   tc_loo=[1, 1, 1], mig=[0.3, 0.31, 0.29], factorvae=[0.5] * 3)
    return fake(vals)


GOOD = dict(rate=[[20, 21, 19], [10, 11, 9], [3, 3.5, 2.5]],
            dist=[[80, 81, 79], [90, 91, 89], [120, 121, 119]],
            tc=[[2, 2.1, 1.9], [1, 1.1, 0.9], [0.3, 0.35, 0.25]],
            mig=[[0.05, 0.06, 0.04], [0.2, 0.21, 0.19], [0.3, 0.32, 0.28]])


def test_checks_verify_a_clean_sweep():
    res = sweep(**GOOD)
    assert all(fn(SIZES, res, T).verified for fn in (dis.claim_d1, dis.claim_d2, dis.claim_d3,
                                                     dis.claim_d4))
    assert dis.claim_d3(SIZES, res, T).numbers["beta_star"] == 16.0


@pytest.mark.parametrize("claim,change", [
    ("D1", dict(rate=[[20, 21, 19], [10, 11, 9], [10, 12, 8]])),         # last step: no drop
    ("D1", dict(dist=[[80, 81, 79], [79, 80, 78], [120, 121, 119]])),    # distortion falls
    ("D2", dict(tc=[[2, 2.1, 1.9], [3, 3.1, 2.9], [0.3, 0.35, 0.25]])),  # a significant rise
    ("D2", dict(tc=[[2, 3, 1], [2, 3, 1], [1.5, 3, 0.5]])),              # drop within the spread
    ("D2", dict(tc_loo=[[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [0.2, 0.2, 0.2]])),  # not in the other
    ("D3", dict(mig=[[0.3, 0.31, 0.29], [0.2, 0.21, 0.19], [0.1, 0.11, 0.09]])),   # falls
    ("D3", dict(mig=[[0.1, 0.3, 0.0], [0.15, 0.35, 0.0], [0.1, 0.2, 0.0]])),       # noise
])
def test_checks_fail_when_the_claim_does_not_hold(claim, change):
    res = sweep(**{**GOOD, **change})
    fn = {"D1": dis.claim_d1, "D2": dis.claim_d2, "D3": dis.claim_d3}[claim]
    assert not fn(SIZES, res, T).verified


@pytest.mark.parametrize("cap,ok", [
    (dict(rate=[5] * 3, distortion=[100, 101, 99], mig=[0.3, 0.31, 0.29]), True),
    (dict(rate=[5] * 3, distortion=[100, 101, 99], mig=[0.1, 0.11, 0.09]), False),  # MIG lower
    (dict(rate=[5] * 3, distortion=[119, 121, 120], mig=[0.3, 0.31, 0.29]), False),  # rec same
])
def test_capacity_check(cap, ok):
    cap = dict(cap, tc=[1] * 3, tc_loo=[1] * 3, factorvae=[0.5] * 3)
    res = sweep(**GOOD, cap=cap)
    c = dis.claim_d4(SIZES, res, T)
    assert c.verified is ok and c.numbers["high"] == "beta16"
