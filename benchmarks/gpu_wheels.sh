#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before benchmarks/gpu_check.sh goes to a lent GPU: downloads into .whl/
# (git-ignored) the wheels that the GPU machine's image lacks (it has torch, triton, transformers,
# accelerate, numpy, scipy, safetensors, pytest ... but no network): saekit's tyro, dacite, gguf and
# datasets, and SAELens + sparsify with what they import. Versions are those of .venv (saekit) and
# benchmarks/.venv-peers (peers), so the GPU runs the peer versions the CPU numbers were measured with.
# Wheels are for CPython 3.12 on x86-64 (the image's python3), installed there with --no-deps.
# Wheels only for the names given here (--no-deps): a peer upgrade that imports something new needs it added.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
exclude="$(git rev-parse --git-path info/exclude)"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
SAEKIT=(tyro typeguard docstring-parser dacite gguf datasets dill multiprocess)
# what `from sae_lens.saes... import ...; from sparsify import ...` loads that the image does not have
PEERS=(sae-lens transformer-lens eai-sparsify better-abc natsort schedulefree simple-parsing pydantic pydantic-core
       annotated-types typing-inspection wandb platformdirs sniffio truststore httpx2 httpcore2 googleapis-common-protos
       opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
       opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common
       opentelemetry-exporter-http-transport opentelemetry-exporter-otlp-common)
pin() {  # NAME==VERSION as installed in the venv of python $1
    "$1" - "$2" <<'PY'
import importlib.metadata as md, sys
print(f"{sys.argv[1]}=={md.version(sys.argv[1])}")
PY
}
specs=()
saekit="${SAEKIT_PYTHON:-.venv/bin/python}"  # a worktree without its own venvs can point at the main checkout's
peers="${PEERS_PYTHON:-benchmarks/.venv-peers/bin/python}"
for n in "${SAEKIT[@]}"; do specs+=("$(pin "$saekit" "$n")"); done
[[ -x $peers ]] || { echo "benchmarks/.venv-peers missing: run benchmarks/setup_peers.sh first" >&2; exit 1; }
for n in "${PEERS[@]}"; do specs+=("$(pin "$peers" "$n")"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${specs[@]}"
ls .whl | wc -l
du -sh .whl
echo "now, from the device tool: run benchmarks/gpu_check.sh with carry [\".whl\"]"
