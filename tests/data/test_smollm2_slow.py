"""End-to-end check on the real default model (SmolLM2-135M from its GGUF file; converted once, cached)."""

from __future__ import annotations

import pytest
import torch

from saekit.data.harvest import activations, activations_and_grads
from saekit.data.hookpoints import n_layers, resolve_hookpoint
from saekit.data.models import load_model
from saekit.data.text import contexts


@pytest.mark.slow
def test_smollm2_resid_post_and_grads():
    model, tok = load_model("smollm2-135m")
    assert n_layers(model) == 30 and model.config.hidden_size == 576
    ctx = next(contexts(tok, "shakespeare", "text", 32, "train", 0.05))
    ids, attn = ctx.input_ids[None], ctx.attention_mask[None]
    hp = resolve_hookpoint(model, "resid_post.9")
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
    torch.testing.assert_close(activations(model, hp, ids, attn), hs[10])
    acts, grads = activations_and_grads(model, hp, ids, attn)
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0
    with torch.no_grad():
        loss = model(input_ids=ids, attention_mask=attn, labels=ids).loss
    assert float(loss) < 6.0  # a real, trained model: far below log(49152) ~ 10.8


@pytest.mark.slow
def test_smollm2_train_on_the_fly_then_feature_dashboard(tmp_path):
    """The whole path on the real model: harvest while training (sparse TopK kernels), then `saekit features`."""
    import json

    from saekit.cli import main
    from saekit.config import DataConfig, LMConfig, SAEConfig, TrainConfig
    from saekit.train.trainer import train

    lm = LMConfig(context_length=64, model_batch_contexts=8, shuffle_buffer_tokens=64 * 16)
    cfg = TrainConfig(sae=SAEConfig(architecture="topk", n_latents=1024, k=16), data=DataConfig(source="lm", lm=lm),
                      steps=20, batch_size=256, lr=1e-3, init_samples=512, progress=False, log_every=10,
                      out_dir=str(tmp_path / "run"))
    sae = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["fvu"] < rows[0]["fvu"] and rows[-1]["l0"] == pytest.approx(16, abs=0.5)
    main(["features", str(tmp_path / "run" / "sae"), "--n-contexts", "12", "--n-show", "6"])
    report = json.loads((tmp_path / "run" / "features" / "features.json").read_text())
    assert report["summary"]["mean_l0"] == pytest.approx(16, abs=0.5) and len(report["latents"]) == 6
    for f in report["latents"]:
        assert f["examples"] and all(e["value"] > 0 and e["codes"][e["focus"]] > 0 for e in f["examples"])
        assert len(f["promoted"]) == 8 and all(isinstance(t, str) for t, _ in f["promoted"])
    assert sae.cfg.d_in == 576
