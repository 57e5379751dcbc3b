#!/usr/bin/env bash
# The GPU check of issue 14, for one lent GPU (an H200 through the device tool), in under 8 minutes:
#   1. the cuda-parametrised tests (`pytest -m cuda`: every test over the `device` fixture, its CUDA
#      instance; `-k cuda` would also pick CPU tests that merely have "cuda" in their names);
#   2. the big-config training-step benchmark on CUDA against SAELens and sparsify (Triton kernels),
#      3 interleaved rounds (benchmarks/train_step.py --device cuda --rounds 3).
# It uses the machine's own python3 (torch with CUDA, triton, transformers, ...: no venv is built, the
# machine has no network) plus the wheels of what that image lacks, carried in .whl/ (made here first by
# benchmarks/gpu_wheels.sh) and installed under /tmp/site. Everything lands in $OUT (at most 8 files):
# env.txt, pytest.txt, train_step.txt, train_step.json, summary.txt; a short summary is printed last.
#
#   benchmarks/gpu_wheels.sh                                   # here, once (needs PyPI)
#   device run: bash benchmarks/gpu_check.sh   carry: [".whl"]   timeout_s: 540
#
# Time caps (seconds, environment): TEST_S=150, BENCH_S=300. ARCHS: the architectures benchmarked
# (default: the six that have a peer to compare with). The benchmark rewrites its JSON after every
# round, so a round cut off by BENCH_S leaves the finished rounds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
TEST_S="${TEST_S:-150}"
BENCH_S="${BENCH_S:-300}"
ARCHS="${ARCHS:-relu,gated,topk,jumprelu,batchtopk,matryoshka}"
PY="${PYTHON:-python3}"
start=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "wheel install failed" >&2
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS for the tests' bit-for-bit comparisons
export TOKENIZERS_PARALLELISM=false

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" - <<'PY' 2>&1
import importlib.metadata as md, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| available", torch.cuda.is_available(), "| bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for name in ("triton", "transformers", "sae-lens", "eai-sparsify", "tyro", "datasets"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
for mod in ("saekit", "sae_lens.saes.topk_sae", "sparsify"):
    try:
        __import__(mod)
        print("import", mod, "ok")
    except Exception as e:  # the summary says which import failed, the run goes on
        print("import", mod, "FAILED:", type(e).__name__, str(e).splitlines()[0][:200])
PY
} > "$OUT/env.txt"
cat "$OUT/env.txt"

echo "== pytest -m cuda (cap ${TEST_S}s)"
timeout "$TEST_S" "$PY" -m pytest -q -m cuda -p no:cacheprovider -rfE --continue-on-collection-errors tests \
    > "$OUT/pytest.txt" 2>&1
test_rc=$?
tail -n 25 "$OUT/pytest.txt"

echo "== train_step.py --configs big --peers --device cuda --rounds 3 (cap ${BENCH_S}s)"
timeout "$BENCH_S" "$PY" benchmarks/train_step.py --configs big --archs "$ARCHS" --peers --device cuda --rounds 3 \
    --peers-python "$PY" --json "$OUT/train_step.json" > "$OUT/train_step.txt" 2>&1
bench_rc=$?

{
    echo "gpu_check: $(( $(date +%s) - start ))s in all"
    grep -m1 "NVIDIA" "$OUT/env.txt" || echo "no GPU seen by nvidia-smi"
    grep "torch\|FAILED\|MISSING" "$OUT/env.txt"
    echo "pytest -m cuda: rc $test_rc$([[ $test_rc == 124 ]] && echo ' (cut off at the cap)'): $(tail -n 1 "$OUT/pytest.txt")"
    echo "train_step: rc $bench_rc$([[ $bench_rc == 124 ]] && echo ' (cut off at the cap; train_step.json holds the finished rounds)')"
    grep -A 12 "saekit / fastest peer" "$OUT/train_step.txt" || grep "error\|Error" "$OUT/train_step.txt" | head -n 12
} > "$OUT/summary.txt"
echo "== summary"
cat "$OUT/summary.txt"
