"""`saekit sweep` on small synthetic grids (seconds), plus one on a tiny random Llama model."""

from __future__ import annotations

import csv
import json

import pytest

from saekit.cli import main
from saekit.config import TrainConfig
from saekit.errors import SaekitError
from saekit.sweep import Point, grid, parse, point_config, run_sweep

SMALL = ["--steps", "20", "--batch-size", "128", "--lr", "3e-3", "--warmup-steps", "5", "--init-samples", "256",
         "--data.synthetic.n-features", "16", "--data.synthetic.d", "8", "--no-progress", "--log-every", "10",
         "--ckpt-every", "0", "--eval-tokens", "512"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_six_point_sweep_writes_table_json_and_plots(tmp_path, capsys):
    out = tmp_path / "sweep"
    main(["sweep", *SMALL, "--architectures", "relu", "gated", "topk", "--l1-coeffs", "0.5", "2",
          "--ks", "2", "4", "--widths", "24", "--sweep-dir", str(out)])
    rows = read_csv(out / "results.csv")
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert {r["architecture"] for r in rows} == {"relu", "gated", "topk"}
    assert {r["sparsity"] for r in rows if r["architecture"] == "topk"} == {"2", "4"}
    for r in rows:
        assert 0 < float(r["l0"]) <= 24 and float(r["fvu"]) >= 0 and float(r["gamma"]) > 0
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == 6 and data["base_config"]["steps"] == 20
    hist = data["rows"][0]["density_histogram"]
    assert sum(hist["counts"]) + hist["dead"] == 24
    for png in ("l0_vs_fvu.png", "gamma_vs_l0.png", "density_histograms.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    topk_l0 = sorted(float(r["l0"]) for r in rows if r["architecture"] == "topk")
    assert 1.5 < topk_l0[0] <= 2 and 3 < topk_l0[1] <= 4  # at most k (a ReLU can zero a kept value)
    assert "wrote" in capsys.readouterr().out


def test_failed_point_is_recorded_and_others_kept(tmp_path):
    out = tmp_path / "sweep"
    main(["sweep", *SMALL, "--steps", "10", "--architectures", "topk", "--ks", "3", "100", "--widths", "16",
          "--sweep-dir", str(out)])
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "k" in rows[1]["error"] and "100" in rows[1]["error"]
    assert rows[0]["l0"] and not rows[1]["l0"]
    data = json.loads((out / "results.json").read_text())
    assert data["rows"][1]["status"] == "failed" and data["rows"][1]["error"] == rows[1]["error"]
    assert (out / "plots" / "l0_vs_fvu.png").is_file()


def test_identical_inputs_give_identical_results(tmp_path):
    args = [*SMALL, "--steps", "15", "--architectures", "relu", "--l1-coeffs", "1", "--widths", "16"]
    main(["sweep", *args, "--sweep-dir", str(tmp_path / "a")])
    main(["sweep", *args, "--sweep-dir", str(tmp_path / "b")])
    a = json.loads((tmp_path / "a" / "results.json").read_text())["rows"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert a == b


def test_sweep_accepts_the_new_architectures(tmp_path):
    out = tmp_path / "sweep"
    main(["sweep", *SMALL, "--architectures", "jumprelu", "batchtopk", "matryoshka", "--l0-coeffs", "0.5",
          "--ks", "3", "--widths", "24", "--sweep-dir", str(out)])
    rows = read_csv(out / "results.csv")
    assert [(r["architecture"], r["sparsity_param"], r["status"]) for r in rows] == [
        ("jumprelu", "l0_coeff", "ok"), ("batchtopk", "k", "ok"), ("matryoshka", "k", "ok")]
    assert all(0 < float(r["l0"]) <= 24 for r in rows)


def test_grid_and_config_file(tmp_path):
    cfg = tmp_path / "base.yaml"
    cfg.write_text("steps: 7\nsae:\n  architecture: relu\n  n_latents: 12\n")
    cmd = parse(["--config", str(cfg), "--lr", "0.01", "--architectures", "gated", "topk", "--ks", "5"])
    assert cmd.cfg.steps == 7 and cmd.cfg.lr == 0.01
    points = grid(cmd.cfg, cmd.architectures, cmd.l1_coeffs, cmd.ks, cmd.widths)
    assert [p.name for p in points] == ["gated-l1_coeff1-m12", "gated-l1_coeff3-m12", "gated-l1_coeff10-m12",
                                        "topk-k5-m12"]
    pc = point_config(cmd.cfg, points[-1], tmp_path)
    assert pc.sae.k == 5 and pc.sae.n_latents == 12 and pc.sae.architecture == "topk"
    with pytest.raises(SaekitError, match="whole number"):
        point_config(cmd.cfg, Point("topk", "k", 2.5, 12), tmp_path)
    with pytest.raises(SaekitError, match="unknown architecture"):
        grid(cmd.cfg, ("nope",), (), (), ())
    with pytest.raises(SaekitError, match="empty"):
        run_sweep(TrainConfig(), [], tmp_path / "none")


def test_lm_sweep_caches_once_and_splices(tmp_path):
    """data.source=lm: one store is harvested, every point trains from it, loss recovered is measured."""
    import torch
    from tiny_lm import tiny_llama, word_tokenizer

    words = "the king queen lord lady speaks of and to a in my night day sword crown".split()
    tok = word_tokenizer(words)
    model = tiny_llama(tok, hidden=16, intermediate=32, heads=2, kv_heads=1, max_positions=64)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(len(words), (300, 8), generator=gen)
    (tmp_path / "c.txt").write_text("\n".join(" ".join(words[i] for i in row) for row in idx.tolist()))
    out = tmp_path / "sweep"
    main(["sweep", "--data.source", "lm", "--data.lm.model", str(tmp_path / "model"), "--data.lm.hookpoint",
          "resid_post.0", "--data.lm.corpus", str(tmp_path / "c.txt"), "--data.lm.context-length", "16",
          "--data.lm.eval-fraction", "0.2", "--cache-tokens", "1500", "--steps", "10", "--batch-size", "64",
          "--init-samples", "128", "--no-progress", "--ckpt-every", "0", "--architectures", "gated", "topk",
          "--l1-coeffs", "1", "--ks", "4", "--widths", "32", "--splice-contexts", "4", "--sweep-dir", str(out)])
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        assert r["loss_recovered"] and r["kl"] and float(r["kl"]) >= 0 and float(r["ce_clean"]) > 0
    assert float(rows[0]["ce_clean"]) == float(rows[1]["ce_clean"])
    assert (out / "store" / "train" / "manifest.json").is_file()
    assert (out / "plots" / "l0_vs_loss_recovered.png").is_file()
    # `saekit eval` on a point trained from a store without an eval split: the splice measures it
    main(["eval", str(out / "runs" / rows[1]["name"] / "sae"), "--splice-contexts", "4"])
    ev = json.loads((out / "runs" / rows[1]["name"] / "eval.json").read_text())
    assert ev["splice"]["loss_recovered"] == pytest.approx(float(rows[1]["loss_recovered"]), rel=1e-4)


def _problems(base_sae: dict, archs, l1s=(), ks=(), widths=(), **data):
    from saekit.config import DataConfig, SAEConfig
    from saekit.sweep import unused_base_settings

    base = TrainConfig(sae=SAEConfig(**base_sae), data=DataConfig(**data))
    return unused_base_settings(base, grid(base, archs, l1s, ks, widths))


def test_a_base_setting_no_point_uses_is_found():
    assert _problems(dict(k=5), ("relu", "gated")) == [
        "sae.k=5 is used by no point of the sweep: no architecture of the sweep (gated, relu) has it (it belongs to "
        "batchtopk, gradient_batchtopk, gradient_matryoshka, gradient_topk, matryoshka, topk)"]
    assert _problems(dict(l1_coeff=7.0), ("relu", "topk"), l1s=(1.0, 2.0), ks=(4,)) == [
        "sae.l1_coeff=7.0 is used by no point of the sweep: every point sets it from --l1-coeffs"]
    assert _problems(dict(n_latents=16), ("relu",), widths=(8,)) == [
        "sae.n_latents=16 is used by no point of the sweep: every point sets it from --widths"]
    assert _problems(dict(expansion_factor=4), ("relu",), widths=(8,))[0].startswith("sae.expansion_factor=4")
    assert _problems(dict(), ("relu",), store="x") == [
        "data.store is set but data.source is 'synthetic'; pass --data.source store to train on it"]


def test_a_base_setting_some_point_uses_is_accepted():
    assert _problems(dict(k=5), ("relu", "topk")) == []  # no --ks: the topk point trains with k=5
    assert _problems(dict(l1_coeff=7.0), ("relu",)) == []  # no --l1-coeffs: the base λ
    assert _problems(dict(n_latents=16), ("relu",), widths=(8, 16)) == []
    assert _problems(dict(architecture="relu", expansion_factor=4), ("gated", "topk"), ks=(4,)) == []


def test_sweep_refuses_an_unused_setting_before_writing(tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(SaekitError, match="sae.k=5 is used by no point of the sweep"):
        run_sweep(parse([*SMALL[:-2], "--sae.k", "5"]).cfg, [Point("relu", "l1_coeff", 1.0, 8)], out)
    assert not out.exists()


def test_a_base_architecture_outside_the_grid_is_refused(tmp_path):
    """--architectures alone chooses what trains: a --sae.architecture outside it would be ignored."""
    from saekit.sweep import main as sweep_main

    out = tmp_path / "sweep"
    with pytest.raises(SaekitError, match=r"--sae.architecture gated is not among --architectures \(relu topk\)"):
        sweep_main([*SMALL, "--sae.architecture", "gated", "--architectures", "relu", "topk", "--sweep-dir", str(out)])
    assert not out.exists()
