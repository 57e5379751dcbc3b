#!/usr/bin/env bash
# Creates benchmarks/.venv-peers with SAELens (sae-lens 6.54.12) and EleutherAI sparsify (eai-sparsify 1.3.3) for
# `benchmarks/train_step.py --peers`. torch==2.13.0 (the CPU build) goes in first and is pinned by a
# constraints file, so neither peer can pull a CUDA torch.
# --with-saebench also installs SAEBench (sae-bench) there, with sae-lens and eai-sparsify held at the
# versions just installed (it is large: xgboost, openai, torchvision, ...; tests/interop use it when present).
set -euo pipefail
with_saebench=0
[[ "${1:-}" == "--with-saebench" ]] && with_saebench=1
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
"$venv/bin/pip" install -q -c "$constraints" "sae-lens==6.54.12" "eai-sparsify==1.3.3"
if [[ $with_saebench == 1 ]]; then
    "$venv/bin/python" - >>"$constraints" <<'PY'
import importlib.metadata as md
for name in ("sae-lens", "eai-sparsify"):
    print(f"{name}=={md.version(name)}")
PY
    "$venv/bin/pip" install -q -c "$constraints" "sae-bench==0.6.0"
    # sae-bench pulls torchvision from PyPI, whose operators do not load on the CPU torch build; transformers
    # then fails to import anything. sae_bench itself never imports torchvision, so it goes.
    "$venv/bin/pip" uninstall -q -y torchvision
fi
rm -f "$constraints"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("sae-lens", "eai-sparsify", "sae-bench"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
PY
