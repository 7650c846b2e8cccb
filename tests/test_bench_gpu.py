"""scripts/bench_gpu.py and scripts/gpu_check.sh run their logic without a GPU (on the stand-in).

The timings mean nothing here; the point is that the script a GPU session runs in its few
minutes of device time has run end to end before, and writes the fields the README reports.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--module", "fake", "--no-peer", "--arch", "784-16-4:relu", "784-8-8-4:tanh",
        "--batch", "16", "32", "--steps", "2", "--warmup", "1", "--n-train", "128",
        "--iwae-k", "6", "--iwae-n", "10", "--rows", "30"]


def test_bench_gpu_runs_on_the_stand_in(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--device",
                        "cuda", *TINY, "--out", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["module"] == "fake" and res["first_step_s_cold"] > 0
    for model in ("784-16-4:relu", "784-8-8-4:tanh"):
        m = res["models"][model]
        for B in (16, 32):
            row = m[f"batch_{B}"]["minivae"]
            assert row["step_ms"] > 0 and row["gemm_floor_ms"] > 0
            assert row["images_per_s"] > 0
        assert -800 < m["iwae"]["minivae"]["iwae_logpx"] < 0   # log p(x) of 784 binary pixels


def test_gpu_check_script_is_valid_bash():
    r = subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", "gpu_check.sh")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
