"""Session fixtures for the interop tests: the peer environment, built when absent."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from peers import (D_IN, EXPORTS, N_LATENTS, SAEBENCH_EXPORTS, SAELENS_MADE, SPARSIFY_EXPORTS, K, ensure_peer_env,
                   real_shaped, run_job)
from safetensors.torch import save_file

import saekit
from saekit.interop import saebench, saelens, sparsify


@pytest.fixture(scope="session")
def peer_python():
    python, note = ensure_peer_env()
    if python is None:
        pytest.skip(f"peer environment unavailable: {note}")
    print(f"peer environment: {note}")
    return python


def saekit_sae(arch: str, x: torch.Tensor, out) -> saekit.SparseAutoencoder:
    """A briefly trained SAE: non-trivial weights and biases, and the trainer's input scale (not 1)."""
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)) * 1e-3 if arch == "gradient_topk" else None
    params = {k: v for k, v in EXPORTS[arch].items() if k != "grad_scale"}
    sae = saekit.train(x, grads=g, architecture=arch, n_latents=N_LATENTS, steps=30, batch_size=128, lr=3e-3,
                       warmup_steps=3, init_samples=512, progress=False, out_dir=str(out), **params)
    assert sae.cfg.input_scale != 1.0
    return sae


@pytest.fixture(scope="session")
def peers(peer_python, tmp_path_factory):
    root = tmp_path_factory.mktemp("peers")
    x = real_shaped()
    save_file({"x": x, "x3": x[:96].clone().reshape(4, 24, D_IN)}, str(root / "x.safetensors"))
    ours, sl, sp = {}, {}, {}
    for arch in EXPORTS:
        ours[arch] = saekit_sae(arch, x, root / "runs" / arch)
        sl[arch] = str(saelens.export(ours[arch], root / "saelens" / arch))
        if arch in SPARSIFY_EXPORTS:
            sp[arch] = str(sparsify.export(ours[arch], root / "sparsify" / arch))
    bench = {arch: str(write_adapter(ours[arch], root / "saebench" / arch)) for arch in SAEBENCH_EXPORTS}
    job = {"x": str(root / "x.safetensors"), "d_in": D_IN, "d_sae": N_LATENTS, "saelens_load": sl,
           "sparsify_load": sp, "saelens_make": SAELENS_MADE, "sparsify_make": [("topk", K)],
           "saebench": {"module": saebench.__file__, "folders": bench}}
    results = run_job(peer_python, job, root)
    return {"x": x, "ours": ours, "results": results, "root": root, "saelens": sl, "sparsify": sp}


def write_adapter(sae, folder):
    """The SAEBench adapter's tensors and cfg, for the peer job to rebuild it inside SAEBench's venv."""
    a = saebench.as_saebench(sae, "tiny-model", hook_layer=3)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in a.state_dict().items()}, str(folder / "tensors.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({**dataclasses.asdict(a.cfg), "k": a.k}))
    return folder
