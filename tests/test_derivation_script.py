"""scripts/derivation.py: the quick run verifies every claim C1-C12 (and the IWAE line), writes
claims.json and the figures, and exits 0; a claim whose mathematics is broken is reported NOT
verified and makes the exit status 1 (so the checks can fail)."""
import json

import numpy as np
import pytest

import derivation                                   # scripts/derivation.py (tests/conftest.py)
from claims import harness
from minivae import estimators
from minivae.linear_gaussian import LinearGaussian

QUICK_RUN = ("derivation.py", "claims.json")        # the quick_run fixture (tests/conftest.py)
FIGURES = ("variance_vs_n", "elbo_gap", "iwae_vs_k", "rate_distortion", "estimator_variance",
           "finite_difference")


def test_quick_run_verifies_every_claim(quick_run):
    proc, out, record = quick_run
    ids = [c["id"] for c in record["claims"]]
    assert ids == derivation.ORDER
    assert {f"C{i}" for i in range(1, 13)} | {"IWAE"} == set(ids)
    failed = [(c["id"], c["summary"]) for c in record["claims"] if not c["verified"]]
    assert failed == []
    assert record["all_verified"] is True and proc.returncode == 0, proc.stderr[-2000:]
    for c in record["claims"]:
        assert c["summary"] and c["numbers"]
    rows = [line.split() for line in proc.stdout.splitlines() if line[:5].strip() in ids]
    assert [(r[0], r[1]) for r in rows] == [(cid, "verified") for cid in ids]


def test_quick_run_writes_the_figures_and_strict_json(quick_run):
    _, out, record = quick_run
    assert sorted(record["figures"]) == sorted(f"{name}.png" for name in FIGURES)
    for name in FIGURES:
        with open(out / f"{name}.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(out / "claims.json") as f:
        json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def test_table_has_one_row_per_claim():
    claims = [harness.Result(cid, derivation.CLAIMS[cid].statement, cid != "C3", "a " * 60,
                             {"x": 1}) for cid in derivation.ORDER]
    lines = harness.table(claims).splitlines()
    rows = [line.split() for line in lines[2:] if line[:5].strip()]
    assert [r[0] for r in rows] == derivation.ORDER
    expect = ["NOT" if cid == "C3" else "verified" for cid in derivation.ORDER]
    assert [r[1] for r in rows] == expect
    assert len(lines) == 2 + 2 * len(claims)          # 120 characters of numbers: two lines each


def test_a_wrong_kl_to_the_posterior_is_caught(tmp_path, monkeypatch):
    """KL(q || p(z|x)) off by one part in a million: ELBO + KL - log p(x) is then ~1e-6 x KL,
    far above the round-off bound (~1e-10), so C6 must fail and the exit status be 1."""
    exact = LinearGaussian.kl_to_posterior
    monkeypatch.setattr(LinearGaussian, "kl_to_posterior",
                        lambda self, x, q, q_logvar=None: exact(self, x, q, q_logvar) * (1 + 1e-6))
    code = derivation.main(["--quick", "--only", "C6", "--out", str(tmp_path)])
    with open(tmp_path / "claims.json") as f:
        record = json.load(f)
    assert code == 1 and [c["verified"] for c in record["claims"]] == [False]


def test_a_biased_pathwise_derivative_is_caught(tmp_path, monkeypatch):
    """dz/dsigma = 1.2 eps instead of eps for the Normal: the reparameterisation estimate of
    d/dsigma E[z^2] is 1.2 x (2 sigma), ~16 standard errors off at the quick sample size, so
    C11 (unbiasedness) and C12 (which relies on it per family) must fail."""
    exact = estimators.Normal.dz_dtheta
    monkeypatch.setattr(estimators.Normal, "dz_dtheta",
                        lambda self, eps: exact(self, eps) * np.array([1.0, 1.2]))
    code = derivation.main(["--quick", "--only", "C11,C12", "--out", str(tmp_path)])
    with open(tmp_path / "claims.json") as f:
        record = json.load(f)
    assert code == 1
    assert {c["id"]: c["verified"] for c in record["claims"]} == {"C11": False, "C12": False}


def test_unknown_claim_is_refused():
    with pytest.raises(SystemExit):
        derivation.main(["--only", "C13"])


def test_a_crashing_claim_is_not_verified_and_the_table_still_prints(tmp_path, monkeypatch,
                                                                      capsys):
    def crash(ctx):
        raise ValueError("boom")

    monkeypatch.setattr(derivation.CLAIMS["C4"], "check", crash)
    code = derivation.main(["--quick", "--only", "C4,C6", "--out", str(tmp_path)])
    with open(tmp_path / "claims.json") as f:
        record = json.load(f)
    assert code == 1
    assert {c["id"]: c["verified"] for c in record["claims"]} == {"C4": False, "C6": True}
    assert "ValueError: boom" in record["claims"][0]["summary"]
    assert "C6    verified" in capsys.readouterr().out
