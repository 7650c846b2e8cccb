#!/usr/bin/env bash
# The GPU checks in one script, for a machine with an NVIDIA GPU, CuPy and PyTorch.
#
#   bash scripts/gpu_check.sh prepare     # here, once: MNIST into .gpudata/ (git-ignored), so
#                                         # it travels with the working tree
#   bash scripts/gpu_check.sh [OUT_DIR]   # there: default $OUT, else runs/gpu_check
#
# Writes four files into OUT_DIR (the device tool brings back at most eight):
#   gpu_check.json  every result: environment, test counts, the CPU/GPU ELBO comparison with the
#                   seed spread, the resume check, the benchmark (scripts/bench_gpu.py)
#   log.txt         everything printed
#   pytest_gpu.txt  the GPU tests' output
#   runs.tar.gz     the run directories (metrics, figures) of the training checks
# About 6-8 minutes on an H200; each step is bounded by `timeout` so the JSON is always written.
# For a dry run on a CPU (the stand-in as cupy, tiny sizes):
#   mkdir -p /tmp/fc && printf 'import sys, fakecupy\nsys.modules[__name__] = fakecupy\n' \
#     > /tmp/fc/cupy.py && PYTHONPATH=/tmp/fc:tests EPOCHS=1 SEEDS="0 1" BENCH="--module fake \
#     --no-peer --arch 784-16-4 --batch 32 --steps 2 --warmup 1 --n-train 256 --iwae-k 5 \
#     --iwae-n 20 --rows 100" bash scripts/gpu_check.sh /tmp/gpu_check
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "prepare" ]; then
    mkdir -p .gpudata/mnist
    cp ../shared/data/mnist/*.gz .gpudata/mnist/
    grep -qx '/.gpudata/' .git/info/exclude 2>/dev/null || echo '/.gpudata/' >> "$(git rev-parse --git-common-dir)/info/exclude"
    echo "prepared .gpudata/mnist; carry it: run(carry=['.gpudata'], command='bash scripts/gpu_check.sh')"
    exit 0
fi
R="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$R"
W="$(mktemp -d)"                       # run directories; archived at the end
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
exec > >(tee "$R/log.txt") 2>&1
echo "== gpu_check $(date -u +%FT%TZ) in $PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c 'import sys, numpy, cupy; print("python", sys.version.split()[0], "numpy", numpy.__version__, "cupy", cupy.__version__)' || true

echo "== 1. the GPU tests (pytest -m gpu) and the whole GPU test file"
timeout 240 $PY -m pytest -q -p no:cacheprovider -m gpu tests/ 2>&1 | tee "$R/pytest_gpu.txt"
echo "pytest -m gpu exit: ${PIPESTATUS[0]}" | tee -a "$R/pytest_gpu.txt"

echo "== 2. training on the GPU and on the CPU, 3 seeds each"
train() {   # dataset device seed epochs extra...
    local d=$1 dev=$2 s=$3 e=$4; shift 4
    timeout 150 $PY -m minivae train --dataset "$d" --device "$dev" --seed "$s" --epochs "$e" \
        --no-progress --out "$W/${d}_${dev}_s$s" "$@" > "$W/${d}_${dev}_s$s.log" 2>&1
    echo "train $d $dev seed $s: exit $?"
}
EPOCHS="${EPOCHS:-3}"; SEEDS="${SEEDS:-0 1 2}"
for s in $SEEDS; do
    train shapes cuda $s $EPOCHS
    train shapes cpu $s $EPOCHS
    train mnist cuda $s $EPOCHS --data-dir .gpudata/mnist
    train mnist cpu $s $EPOCHS --data-dir .gpudata/mnist
done

echo "== 3. an interrupted GPU run resumes"
timeout 120 $PY -m minivae train --device cuda --epochs "$EPOCHS" --no-progress --out "$W/resume" \
    > "$W/resume_1.log" 2>&1 &
pid=$!
sleep "${RESUME_AFTER:-12}"; kill -INT $pid; wait $pid; echo "interrupted run exit: $? (130 expected)"
timeout 150 $PY -m minivae train --resume "$W/resume" --no-progress > "$W/resume_2.log" 2>&1
echo "resumed run exit: $?"

echo "== 4. benchmark: minivae vs PyTorch eager on this GPU"
timeout 300 $PY scripts/bench_gpu.py ${BENCH:-} --out "$W/bench_gpu.json"
echo "bench exit: $?"

echo "== summary"
$PY - "$W" "$R" <<'EOF'
import glob, json, os, statistics, sys
W, R = sys.argv[1:]

seeds = os.environ.get("SEEDS", "0 1 2").split()
epochs = int(os.environ.get("EPOCHS", "3"))

def final(run):
    """(held-out ELBO after the last epoch, rows); None unless the run finished every epoch."""
    try:
        rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if l.strip()]
    except OSError:
        return None, 0
    done = rows and rows[-1].get("epoch") == epochs
    return (rows[-1].get("test_elbo") if done else None), len(rows)

out = {"training": {}, "seeds": seeds, "epochs": epochs}
for d in ("shapes", "mnist"):
    for dev in ("cuda", "cpu"):
        v = [final(os.path.join(W, f"{d}_{dev}_s{s}"))[0] for s in seeds]
        out["training"][f"{d}_{dev}"] = v
    g, c = (out["training"][f"{d}_{k}"] for k in ("cuda", "cpu"))
    if None not in g + c:
        spread = max(statistics.stdev(g), statistics.stdev(c))
        out["training"][f"{d}_verdict"] = dict(
            gpu_mean=statistics.mean(g), cpu_mean=statistics.mean(c), seed_sd=spread,
            seed0_diff=g[0] - c[0],
            agree=abs(statistics.mean(g) - statistics.mean(c)) <= 3 * spread * (2 / len(g)) ** 0.5)
e, n = final(os.path.join(W, "resume"))
out["resume"] = dict(final_test_elbo=e, metric_rows=n, complete=n == epochs + 1)
try:
    out["bench"] = json.load(open(os.path.join(W, "bench_gpu.json")))
except (OSError, ValueError) as err:
    out["bench"] = f"missing: {err}"
try:
    out["pytest_gpu"] = open(os.path.join(R, "pytest_gpu.txt")).read().strip().splitlines()[-2:]
except OSError:
    pass
json.dump(out, open(os.path.join(R, "gpu_check.json"), "w"), indent=1)
print(json.dumps({k: v for k, v in out.items() if k != "bench"}, indent=1))
EOF
tar -C "$W" -czf "$R/runs.tar.gz" --exclude=checkpoint.npz . && echo "wrote $R"
