"""`saekit features`: per-latent statistics, top-activating contexts, logit effects and the HTML page."""

from __future__ import annotations

import json
import math

import pytest
import torch

from saekit.config import SAEConfig
from saekit.data.hookpoints import resolve_hookpoint, run_captured
from saekit.data.text import collate
from saekit.eval.features import FeaturesCommand, TopActivations, example_windows, feature_report, scan
from saekit.report.dashboard import render_dashboard
from saekit.sae import build_sae


def test_top_activations_hand_case():
    """Two latents over 5 tokens in two chunks; zeros and negatives are never examples."""
    top = TopActivations(2, 2)
    top.add(torch.tensor([[1.0, 0.0], [3.0, -1.0], [0.5, 0.0]]), first_token=0)
    top.add(torch.tensor([[2.0, 0.0], [0.0, 4.0]]), first_token=3)
    assert top.values[0].tolist() == [3.0, 2.0] and top.tokens[0].tolist() == [1, 3]
    assert top.values[1].tolist() == [4.0, -math.inf] and top.tokens[1].tolist() == [4, -1]


@pytest.fixture()
def setting(tiny_model, tokenizer, corpus_dir):
    from saekit.eval.splice import held_out_contexts

    hp = resolve_hookpoint(tiny_model, "resid_post.0")
    ctxs = held_out_contexts(tokenizer, str(corpus_dir), "text", 16, 0.3, 7)
    sae = build_sae(SAEConfig(architecture="topk", d_in=32, n_latents=48, k=3), seed=3)
    return hp, ctxs, sae


def test_scan_matches_encoding_everything_at_once(tiny_model, setting):
    hp, ctxs, sae = setting
    res = scan(tiny_model, hp, sae, ctxs, batch_contexts=3, n_examples=4)  # 3 batches: stats are merged
    ids, attn, mask = collate(ctxs)
    with torch.no_grad():
        codes = sae.encode(run_captured(tiny_model, hp, ids, attn)[mask])
    assert res.n_tokens == codes.shape[0] == int(mask.sum())
    assert torch.equal(res.fired, (codes > 0).sum(0))
    torch.testing.assert_close(res.code_max, codes.amax(0))
    torch.testing.assert_close(res.mean_when_firing.float(), codes.sum(0) / (codes > 0).sum(0).clamp_min(1))
    rows, cols = mask.nonzero(as_tuple=True)
    for latent in (0, 7, 31):
        want = codes[:, latent].topk(4)
        assert torch.allclose(res.top.values[latent].clamp_min(0), want.values.clamp_min(0))
        for v, t in zip(res.top.values[latent], res.top.tokens[latent]):
            if v > 0:  # the token index points at the right (context, position)
                c, p = res.where[t].tolist()
                assert (rows[t], cols[t]) == (c, p) and codes[t, latent] == v


def test_example_windows_show_the_latent_code_at_the_example(tiny_model, tokenizer, setting):
    hp, ctxs, sae = setting
    res = scan(tiny_model, hp, sae, ctxs, batch_contexts=4, n_examples=3)
    shown = (res.fired > 0).nonzero().flatten()[:4].tolist()
    windows = example_windows(tiny_model, hp, sae, ctxs, res, shown, window=5, decode=lambda t: f"t{t}",
                              batch_contexts=2)
    for latent in shown:
        assert windows[latent], latent
        for e in windows[latent]:
            assert e["codes"][e["focus"]] == pytest.approx(e["value"], rel=1e-5)
            assert len(e["tokens"]) == len(e["codes"]) <= 5 + 5 // 2 + 1
            assert e["tokens"][e["focus"]] == f"t{int(ctxs[[c.index for c in ctxs].index(e['context'])].input_ids[e['position']])}"


def test_report_and_page(tiny_model, tokenizer, setting):
    hp, ctxs, sae = setting
    cfg = FeaturesCommand(sae=None, n_show=5, n_examples=3, n_logits=4, batch_contexts=3)  # type: ignore[arg-type]
    report = feature_report(tiny_model, tokenizer, hp, sae, ctxs, cfg)
    freq = torch.tensor(report["frequency"])
    assert report["summary"]["dead_fraction"] == pytest.approx((freq == 0).double().mean().item())
    assert report["summary"]["mean_l0"] == pytest.approx(3.0)  # TopK k=3 with positive pre-activations
    assert len(report["latents"]) == 5 and all(freq[f["index"]] > 0 for f in report["latents"])
    assert all(len(f["promoted"]) == 4 and f["promoted"][0][1] >= f["promoted"][-1][1] for f in report["latents"])
    page = render_dashboard({"sae": "s", "architecture": "topk", "model": "m", "hookpoint": "h", **report})
    assert page.count('class="latent"') == 5
    json.dumps(report)  # JSON-able


def test_page_escapes_token_text():
    report = {"sae": "s", "architecture": "relu", "model": "m", "hookpoint": "h",
              "summary": {"tokens": 3}, "frequency": [0.5, 0.0],
              "latents": [{"index": 0, "frequency": 0.5, "mean_when_firing": 1.0, "max": 2.0,
                           "promoted": [["<b>", 1.0]], "suppressed": [["&", -1.0]],
                           "examples": [{"value": 2.0, "context": 0, "position": 1, "focus": 1,
                                         "tokens": ["a", "<script>alert(1)</script>"], "codes": [None, 2.0]}]}]}
    page = render_dashboard(report)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<code>\"\\u003cb\\u003e\"</code>" in page  # a token shown in a logit list: quoted and escaped
    assert "rgba(255, 140, 0, 1.000)" in page  # the example's own token at full colour
    assert "not encoded" in page


def test_features_command_end_to_end(tmp_path, model_dir, corpus_dir, capsys):
    from saekit.cli import main
    from saekit.config import DataConfig, LMConfig, TrainConfig
    from saekit.train.trainer import train

    lm = LMConfig(model=str(model_dir), hookpoint="resid_post.0", corpus=str(corpus_dir), context_length=16,
                  eval_fraction=0.3, shuffle_buffer_tokens=128)
    train(TrainConfig(sae=SAEConfig(architecture="relu", n_latents=40), data=DataConfig(source="lm", lm=lm), steps=3,
                      batch_size=32, init_samples=64, progress=False, out_dir=str(tmp_path / "run")))
    main(["features", str(tmp_path / "run" / "sae"), "--n-contexts", "5", "--n-show", "3", "--n-examples", "2"])
    out = tmp_path / "run" / "features"
    report = json.loads((out / "features.json").read_text())
    assert report["hookpoint"] == "resid_post.0" and len(report["frequency"]) == 40
    assert (out / "index.html").read_text().count('class="latent"') == len(report["latents"]) <= 3
    assert "index.html" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["features", str(tmp_path / "run" / "sae"), "--latents", "40"])
    assert bad.value.code == 2
