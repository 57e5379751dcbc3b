"""The SAEBench adapter: BaseSAE's interface (shapes, dtypes, cfg fields, to()), encode/decode equal to saekit's;
and, where sae_bench installs in the peer environment, SAEBench's own code runs on it."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peers import SAEBENCH_EXPORTS  # noqa: E402
from sae_factories import tiny_sae  # noqa: E402

from saekit.interop.saebench import SAEBenchSAE, as_saebench  # noqa: E402

# CustomSAEConfig's fields in sae_bench 0.6.0 (custom_saes/custom_sae_config.py)
CUSTOM_SAE_CONFIG_FIELDS = {"model_name", "d_in", "d_sae", "hook_layer", "hook_name", "context_size", "hook_head_index",
                            "architecture", "apply_b_dec_to_input", "finetuning_scaling_factor", "activation_fn_str",
                            "prepend_bos", "normalize_activations", "dtype", "device", "dataset_path",
                            "dataset_trust_remote_code", "seqpos_slice", "training_tokens",
                            "sae_lens_training_version", "neuronpedia_id"}
ARCHS = {"relu": {}, "gated": {}, "topk": {"k": 3}, "gradient_topk": {"k": 3, "beta": 1.0}}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_adapter_interface_and_agreement(arch):
    sae = tiny_sae(arch, **ARCHS[arch])
    sae.cfg = replace(sae.cfg, input_scale=0.37)
    a = as_saebench(sae, "gpt2", hook_layer=5)
    d, m = sae.cfg.d_in, sae.cfg.n_latents
    assert isinstance(a, torch.nn.Module) and isinstance(a, SAEBenchSAE)
    for name, shape in {"W_enc": (d, m), "W_dec": (m, d), "b_enc": (m,), "b_dec": (d,)}.items():
        p = getattr(a, name)
        assert isinstance(p, torch.nn.Parameter) and tuple(p.shape) == shape and p.dtype == torch.float32, name
    assert CUSTOM_SAE_CONFIG_FIELDS <= {f.name for f in dataclasses.fields(a.cfg)}
    assert (a.cfg.d_in, a.cfg.d_sae, a.cfg.hook_layer, a.cfg.hook_name) == (d, m, 5, "blocks.5.hook_resid_post")
    assert a.cfg.dtype == "float32" and a.dtype == torch.float32 and a.device == torch.device("cpu")
    x = torch.randn(3, 7, d) * 4  # [batch, seq, d_in], as SAEBench passes activations
    codes = a.encode(x)
    assert codes.shape == (3, 7, m)
    torch.testing.assert_close(codes, sae.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.decode(codes), sae.decode(codes), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a(x), sae(x)[0], atol=1e-5, rtol=1e-5)
    assert a.check_decoder_norms() is (sae.cfg.input_scale == 1.0 and sae.keeps_unit_norm())
    a.to(dtype=torch.bfloat16)
    assert a.dtype == torch.bfloat16 and a.cfg.dtype == "bfloat16" and a.encode(x).dtype == torch.bfloat16
    assert isinstance(a.cfg.to_dict(), dict)


def test_adapter_imports_nothing_of_saekit():
    """SAEBench's environment loads the adapter by file path, without saekit: its module-level imports must be
    torch and the standard library only (saekit is imported inside the functions that run in saekit's own
    environment), and its copy of the thresholded architectures must equal saekit's."""
    import ast

    from saekit.interop import saebench, weights

    tree = ast.parse(Path(saebench.__file__).read_text())
    top = tree.body  # module level only
    roots = {alias.name.split(".")[0] for node in top if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in top if isinstance(node, ast.ImportFrom) and node.module}
    assert roots <= {"__future__", "dataclasses", "typing", "math", "torch"}, roots
    assert saebench.THRESHOLDED == weights.THRESHOLDED


def test_unit_scale_unit_atoms_pass_the_decoder_norm_check():
    sae = tiny_sae("topk", k=3)
    assert as_saebench(sae, "m", 0).check_decoder_norms()


def test_saebench_runs_its_own_code_on_the_adapter(peers):
    """In the peer venv: SAEBench's load_and_format_sae and its core eval's weight-based metrics (no hub needed)."""
    results = peers["results"]
    if "saebench_missing" in results:
        pytest.skip(f"sae_bench does not import in the peer environment ({results['saebench_missing']}); "
                    "build it with: bash benchmarks/setup_peers.sh --with-saebench")
    x = peers["x"]
    for arch in SAEBENCH_EXPORTS:
        sae = peers["ours"][arch]
        res = results[f"saebench/{arch}"]
        assert "error" not in res, res.get("error")
        assert res["missing_cfg_fields"] == [] and res["hook_layer"] == 3
        got = load_file(res["tensors"])
        scale = max(1.0, float(x.abs().max()))
        assert float((got["codes"] - sae.encode(x)).abs().max()) <= 1e-5 * max(1.0, float(got["codes"].abs().max()))
        assert float((got["recon"] - sae(x)[0]).abs().max()) <= 1e-5 * scale
        cos = got["encoder_decoder_cosine_sim"]
        assert cos.shape == (sae.cfg.n_latents,) and bool((cos.abs() <= 1 + 1e-5).all())
        assert got["max_decoder_cosine_sim"].shape == (sae.cfg.n_latents,)
