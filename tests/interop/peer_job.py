"""Runs inside benchmarks/.venv-peers (SAELens and sparsify installed; saekit is not importable there).

``python peer_job.py JOB.json`` reads a job written by tests/interop/peers.py:

- ``x``: a safetensors file with ``x`` [n, d_in] (and ``x3`` [b, t, d_in]): the activations to encode;
- ``saelens_load``: folders exported by saekit, loaded with ``sae_lens.SAE.load_from_disk``;
- ``sparsify_load``: folders exported by saekit, loaded with ``sparsify.SparseCoder.load_from_disk``;
- ``saelens_make``: [name, architecture, options] SAEs that SAELens itself creates and saves;
- ``sparsify_make``: [name, k] coders that sparsify itself creates and saves;
- ``saebench``: {module: saekit's adapter file, folders: {name: adapter tensors + cfg}}, run through SAEBench's
  own code when sae_bench imports (else ``saebench_missing`` says why).

Every result goes to ``OUT/<name>.safetensors`` (codes, recon, ...) and ``OUT/results.json``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights and biases (SAELens initialises its biases at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def saelens_load(folder: str, x: torch.Tensor, x3: torch.Tensor) -> dict:
    from sae_lens import SAE

    sae = SAE.load_from_disk(folder, device="cpu")
    with torch.no_grad():
        codes = sae.encode(x)
        out = {"codes": codes, "recon": sae.decode(codes), "forward": sae(x), "codes3": sae.encode(x3)}
    return {"tensors": out, "class": type(sae).__name__, "architecture": sae.cfg.architecture()}


def sparsify_load(folder: str, x: torch.Tensor) -> dict:
    from sparsify import SparseCoder

    coder = SparseCoder.load_from_disk(folder, device="cpu")
    with torch.no_grad():
        acts, idx, _ = coder.encode(x)
        codes = torch.zeros(x.shape[0], coder.num_latents).scatter_(-1, idx, acts)
        recon = coder.decode(acts, idx)
    return {"tensors": {"codes": codes, "recon": recon}, "class": type(coder).__name__, "k": coder.cfg.k}


def saelens_make(name: str, arch: str, options: dict, d_in: int, d_sae: int, out: Path, x: torch.Tensor,
                 seed: int) -> dict:
    """An SAE that SAELens creates and saves; jumprelu gets per-latent thresholds inside the range of its
    positive pre-activations on x (four ≤ 0), batchtopk a global one, saved as SAELens saves it for inference."""
    from sae_lens import (SAE, BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, GatedSAE, GatedSAEConfig,
                          JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig)

    classes = {"standard": (StandardSAE, StandardSAEConfig), "gated": (GatedSAE, GatedSAEConfig),
               "topk": (TopKSAE, TopKSAEConfig), "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
               "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig)}
    cls, cfg_cls = classes[arch]
    sae = cls(cfg_cls(d_in=d_in, d_sae=d_sae, **options))
    randomise(sae, seed)
    folder = out / "saelens_made" / name
    with torch.no_grad():
        pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc if arch in ("jumprelu", "batchtopk") else None
        if arch == "jumprelu":  # latent i: (10 + 60 i / d_sae) % of its largest pre-activation; the first four ≤ 0
            top = pre.max(0).values.clamp_min(1e-3)
            sae.threshold.copy_((0.1 + 0.6 * torch.arange(d_sae) / d_sae) * top)
            sae.threshold[:4] = torch.tensor([-1.0, 0.0, -0.01, 0.0])
        if arch == "batchtopk":
            sae.topk_threshold.fill_(float(pre[pre > 0].median()))
    if arch == "batchtopk":  # SAELens's own conversion: a jumprelu folder with the threshold in every latent
        sae.save_inference_model(folder)
        sae = SAE.load_from_disk(folder, device="cpu")
    else:
        sae.save_model(folder)
    with torch.no_grad():
        codes = sae.encode(x)
        tensors = {"codes": codes, "recon": sae.decode(codes)}
    return {"tensors": tensors, "folder": str(folder), "architecture": sae.cfg.architecture()}


def sparsify_make(name: str, k: int, d_in: int, d_sae: int, out: Path, x: torch.Tensor, seed: int) -> dict:
    from sparsify import SparseCoder, SparseCoderConfig

    coder = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k))
    randomise(coder, seed)
    folder = out / "sparsify_made" / name
    coder.save_to_disk(folder)
    with torch.no_grad():
        acts, idx, _ = coder.encode(x)
        codes = torch.zeros(x.shape[0], d_sae).scatter_(-1, idx, acts)
        tensors = {"codes": codes, "recon": coder.decode(acts, idx)}
    return {"tensors": tensors, "folder": str(folder)}


def saebench_check(module_path: str, folder: str, x: torch.Tensor) -> dict:
    """saekit's adapter (loaded by file path: saekit itself is not installed here) through SAEBench's own code:
    load_and_format_sae (what every SAEBench eval calls on a custom SAE) and the core eval's feature-wise
    weight-based metrics, which need no model or data set from a hub."""
    import importlib.util

    from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig
    from sae_bench.evals.core.main import get_featurewise_weight_based_metrics
    from sae_bench.sae_bench_utils import general_utils

    spec = importlib.util.spec_from_file_location("saekit_saebench_adapter", module_path)
    adapter = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = adapter  # dataclasses look their module up while the class is made
    spec.loader.exec_module(adapter)
    cfg = json.loads((Path(folder) / "cfg.json").read_text())
    k = cfg.pop("k")
    cfg["seqpos_slice"] = tuple(cfg["seqpos_slice"])
    sae = adapter.SAEBenchSAE(load_file(str(Path(folder) / "tensors.safetensors")), adapter.SAEBenchConfig(**cfg), k=k)
    _, sae, _ = general_utils.load_and_format_sae("custom_sae", sae, "cpu")
    metrics = get_featurewise_weight_based_metrics(sae)
    with torch.no_grad():
        codes = sae.encode(x)
        tensors = {"codes": codes, "recon": sae.decode(codes), "forward": sae(x),
                   **{name: torch.tensor(v) for name, v in metrics.items()}}
    missing = sorted(set(CustomSAEConfig.__dataclass_fields__) - set(vars(sae.cfg)))
    return {"tensors": tensors, "missing_cfg_fields": missing, "architecture_str": sae.cfg.architecture_str,
            "hook_layer": sae.cfg.hook_layer, "json_cfg": json.loads(json.dumps(sae.cfg.to_dict(), default=str)) != {}}


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    data = load_file(job["x"])
    x, x3 = data["x"], data["x3"]
    d_in, d_sae = job["d_in"], job["d_sae"]
    results: dict = {"versions": {}}
    import importlib.metadata as md

    for pkg in ("sae-lens", "eai-sparsify"):
        results["versions"][pkg] = md.version(pkg)
    tasks = [(f"saelens_load/{n}", lambda f=f: saelens_load(f, x, x3)) for n, f in job.get("saelens_load", {}).items()]
    tasks += [(f"sparsify_load/{n}", lambda f=f: sparsify_load(f, x)) for n, f in job.get("sparsify_load", {}).items()]
    tasks += [(f"saelens_make/{n}", lambda n=n, a=a, o=o, i=i: saelens_make(n, a, o, d_in, d_sae, out, x, 100 + i))
              for i, (n, a, o) in enumerate(job.get("saelens_make", []))]
    tasks += [(f"sparsify_make/{n}", lambda n=n, k=k, i=i: sparsify_make(n, k, d_in, d_sae, out, x, 200 + i))
              for i, (n, k) in enumerate(job.get("sparsify_make", []))]
    if job.get("saebench"):
        try:
            import sae_bench  # noqa: F401

            results["versions"]["sae-bench"] = md.version("sae-bench")
            tasks += [(f"saebench/{n}", lambda f=f: saebench_check(job["saebench"]["module"], f, x))
                      for n, f in job["saebench"]["folders"].items()]
        except ImportError as e:
            results["saebench_missing"] = str(e)
    for key, task in tasks:
        try:
            res = task()
            tensors = res.pop("tensors")
            path = out / (key.replace("/", "__") + ".safetensors")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
            results[key] = {**res, "tensors": str(path)}
        except Exception:  # reported to the test, which fails with the traceback
            results[key] = {"error": traceback.format_exc()}
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
