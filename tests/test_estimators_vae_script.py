"""scripts/estimators_vae.py: the --quick run states E1-E5 with verdicts and numbers, writes
claims.json and its figures, and exits 0 exactly when every claim is verified; E1-E3 (the two
estimators on a real encoder) are verified; a biased score breaks E1 (so the check can fail)."""
import pytest

from claims import estimators_vae as study          # scripts/claims/ (tests/conftest.py)
from minivae import objectives

QUICK_RUN = ("estimators_vae.py", "claims.json")    # the quick_run fixture (tests/conftest.py)
ORDER = [c.id for c in study.CLAIMS]


def test_quick_run_states_every_claim_and_verifies_e1_to_e3(quick_run):
    proc, out, record = quick_run
    assert [c["id"] for c in record["claims"]] == ORDER == ["E1", "E2", "E3", "E4", "E5"]
    for c in record["claims"]:
        assert c["summary"] and c["numbers"] and "error" not in c["numbers"], c
    verified = {c["id"]: c["verified"] for c in record["claims"]}
    assert verified["E1"] and verified["E2"] and verified["E3"], record["claims"][:3]
    assert record["all_verified"] == all(verified.values())
    assert proc.returncode == (0 if record["all_verified"] else 1), proc.stderr[-2000:]
    rows = [line.split()[:2] for line in proc.stdout.splitlines()
            if line.split() and line.split()[0] in verified]
    assert [r[0] for r in rows] == ORDER
    assert all(r[1] == ("verified" if verified[r[0]] else "NOT") for r in rows)
    e2 = record["claims"][1]["numbers"]
    assert e2["smallest_lower_bound"] > 1
    assert e2["decoder_ratio"][0] == pytest.approx(1, abs=1e-6)


def test_quick_run_writes_its_figures(quick_run):
    _, out, record = quick_run
    assert sorted(record["figures"]) == ["curves.png", "discrete.png", "variance_vs_S.png"]
    for name in record["figures"]:
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_e1_fails_for_a_biased_score(monkeypatch):
    """A score for logvar without its -1/2 ((eps^2)/2: mean 1/2, not 0) biases the no-baseline
    estimator; E1 must say NOT verified."""
    monkeypatch.setattr(objectives, "gaussian_score",
                        lambda eps, std: (eps / std, eps * eps * eps.dtype.type(0.5)))
    ctx = study.Context(study.QUICK, 0)
    claim = study.claim_e1(ctx)
    assert not claim.verified, claim.summary
