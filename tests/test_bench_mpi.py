"""scripts/bench_mpi.py: the ring all-reduce formula, the paper table in docs/parallel.md from the
saved measurements, the figure, and (with mpi4py) its worker under mpiexec -n 2."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_mpi  # noqa: E402

SAVED = ROOT / "docs" / "results" / "mpi" / "bench.json"


def test_ring_allreduce_cost():
    # R = 2: two messages, each machine sends and receives the whole buffer once
    assert bench_mpi.ring_allreduce_s(1000, 2, 4e3, 1e-3) == pytest.approx(2e-3 + 4000 / 4e3)
    # R -> infinity: twice the buffer, 2 (R - 1) latencies
    T = bench_mpi.ring_allreduce_s(1000, 1000, 4e3, 0.0)
    assert T == pytest.approx(2 * 999 / 1000 * 1.0)


def test_paper_table_comes_from_the_saved_measurements(tmp_path):
    saved = json.loads(SAVED.read_text())
    est = bench_mpi.paper(saved["measured"])
    assert len(est) == len(saved["paper"]) == 12
    for a, b in zip(est, saved["paper"]):
        assert a["allreduce_ms"] == pytest.approx(b["allreduce_ms"], rel=1e-12)
        assert a["pays_from_batch"] == pytest.approx(b["pays_from_batch"], rel=1e-12)
        # where it pays, the speed-up formula crosses 1 there
        t, T, R = a["seconds_per_image_one_machine"], a["allreduce_ms"] / 1e3, a["ranks"]
        B = a["pays_from_batch"]
        assert B * t / (B * t / R + T) == pytest.approx(1.0, rel=1e-9)
    doc = (ROOT / "docs" / "parallel.md").read_text()
    mlp8 = next(e for e in est if e["model"] == "mlp" and e["ranks"] == 8
                and e["network"] == "10 Gb/s")
    assert f"| 10 Gb/s | 8 | 4.0 ms | {mlp8['pays_from_batch']:.0f} | " \
           f"{mlp8['half_efficient_from_batch']:,.0f} |" in doc
    bench_mpi.figure(saved["measured"], est, tmp_path / "s.png", 1.0)
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_worker_under_mpiexec(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install '.[mpi]'")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                           + os.environ.get("PATH", ""))
    if mpiexec is None:
        pytest.skip("mpiexec is not on PATH")
    p = subprocess.run([mpiexec, "-n", "2", sys.executable, str(ROOT / "scripts" / "bench_mpi.py"),
                        "--worker", "--model", "mlp", "--steps", "2", "--warmup", "1", "--batch",
                        "8"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr[-2000:]
    row = json.loads(p.stdout.strip().splitlines()[-1])
    assert row["ranks"] == 2 and row["params"] == 652824 and row["images_per_s"] > 0
    assert 0 < row["allreduce_share"] < 1 and row["bare_allreduce_ms"] > 0
