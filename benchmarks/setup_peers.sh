#!/usr/bin/env bash
# Creates benchmarks/.venv-peers with SAELens (sae-lens) and EleutherAI sparsify (eai-sparsify) for
# `benchmarks/train_step.py --peers`. torch==2.13.0 (the CPU build) goes in first and is pinned by a
# constraints file, so neither peer can pull a CUDA torch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-peers"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "torch==2.13.0"
torch_version="$("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
echo "torch $torch_version"
constraints="$(mktemp)"
echo "torch==$torch_version" > "$constraints"
"$venv/bin/pip" install -q -c "$constraints" sae-lens eai-sparsify
rm -f "$constraints"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("sae-lens", "eai-sparsify"):
    print(name, md.version(name))
PY
