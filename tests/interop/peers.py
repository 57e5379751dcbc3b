"""The peer environment (benchmarks/.venv-peers: SAELens and EleutherAI sparsify on the CPU torch) for tests.

SAELens and sparsify pin dependencies that cannot live in saekit's venv, so their side of every test runs
in their own venv through ``tests/interop/peer_job.py``, in one subprocess per test session (importing
SAELens takes ~20 s). The venv, SAEBench included, is built by ``benchmarks/setup_peers.sh --with-saebench``
when absent (2-7 minutes from a package index, mostly downloads); if it cannot be built (no network), the
peer tests skip and say why. SAEKIT_SKIP_SAEBENCH=1 builds it without SAEBench (whose test then skips).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "benchmarks" / ".venv-peers"
PYTHON = VENV / "bin" / "python"
SETUP = ROOT / "benchmarks" / "setup_peers.sh"
JOB = Path(__file__).with_name("peer_job.py")
CHECK = "import sae_lens, sparsify, safetensors"
CHECK_SAEBENCH = "import sae_bench.custom_saes.base_sae"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _works(check: str = CHECK) -> bool:
    if not PYTHON.is_file():
        return False
    return subprocess.run([str(PYTHON), "-c", check], env=_env(), capture_output=True, timeout=300).returncode == 0


def _wanted() -> tuple[str, list[str]]:
    """(what a complete peer venv imports, the setup command that builds it)."""
    if os.environ.get("SAEKIT_SKIP_SAEBENCH"):
        return CHECK, ["bash", str(SETUP)]
    return f"{CHECK}; {CHECK_SAEBENCH}", ["bash", str(SETUP), "--with-saebench"]


def ensure_peer_env(timeout: float = 1200) -> tuple[Path | None, str]:
    """(python of the peer venv, note); (None, why) when it is absent and cannot be built."""
    if os.environ.get("SAEKIT_SKIP_PEERS"):
        return None, "SAEKIT_SKIP_PEERS is set"
    check, command = _wanted()
    if _works(check):
        return PYTHON, "present"
    start = time.monotonic()
    try:
        build = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        build = None
    took = time.monotonic() - start
    if not _works():  # without SAEBench the other peer tests still run; its own test says why it skips
        if build is None:
            return None, f"building {VENV} with {SETUP} took over {timeout:.0f} s"
        tail = " | ".join((build.stdout + build.stderr).strip().splitlines()[-3:])
        return None, f"could not build {VENV} with {SETUP} (no network?): {tail}"
    return PYTHON, f"built in {took:.0f} s" + ("" if _works(check) else " (SAEBench did not install)")


def run_job(python: Path, job: dict, folder: Path, timeout: float = 900) -> dict:
    """Run peer_job.py on ``job`` (written to folder/job.json); its results.json, parsed."""
    folder.mkdir(parents=True, exist_ok=True)
    job = {**job, "out": str(folder / "peer")}
    (folder / "job.json").write_text(json.dumps(job))
    done = subprocess.run([str(python), str(JOB), str(folder / "job.json")], env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"peer job failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads((folder / "peer" / "results.json").read_text())


# the shapes and architectures every peer test uses
D_IN, N_LATENTS, K = 64, 256, 16
EXPORTS = {"relu": {}, "gated": {}, "topk": {"k": K}, "gradient_topk": {"k": K, "beta": 2.0}, "jumprelu": {},
           "batchtopk": {"k": K}, "matryoshka": {"k": K}}
SPARSIFY_EXPORTS = ("topk", "gradient_topk")
THRESHOLDED = ("jumprelu", "batchtopk", "matryoshka")  # SAELens jumprelu: codes gated by thresholds
SAEBENCH_EXPORTS = ("relu", "gated", "topk", "gradient_topk", *THRESHOLDED)  # the SAEBench adapter's architectures
SAELENS_MADE = [("standard", "standard", {}), ("standard_no_bdec", "standard", {"apply_b_dec_to_input": False}),
                ("gated", "gated", {}), ("topk", "topk", {"k": K}),
                ("topk_rescaled", "topk", {"k": K, "rescale_acts_by_decoder_norm": True}),
                ("jumprelu", "jumprelu", {}), ("jumprelu_no_bdec", "jumprelu", {"apply_b_dec_to_input": False}),
                ("batchtopk", "batchtopk", {"k": K})]


def real_shaped(n: int = 512, seed: int = 0) -> torch.Tensor:
    """Residual-stream-like activations: a large shared offset, a few outlier dimensions, heavy tails."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g) * (1 + 3 * torch.rand(D_IN, generator=g))
    chi2 = torch.randn(n, 4, generator=g).pow(2).sum(1, keepdim=True)
    x = x * torch.randn(n, 1, generator=g) / (chi2 / 4).sqrt()  # Student-t(4) per-token scale: norms vary a lot
    x[:, :3] *= 20  # outlier dimensions
    return x + 5 * torch.randn(D_IN, generator=g)
