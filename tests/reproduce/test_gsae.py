"""`saekit reproduce gsae`: the verdict and selection logic on hand-made inputs, the raw-β identity
against the real trainer, and the smoke scale end to end (slow: the real SmolLM2 model)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from saekit.config import DataConfig, SAEConfig, TrainConfig
from saekit.data.store import StoreWriter
from saekit.errors import SaekitError
from saekit.reproduce import gsae
from saekit.reproduce.gsae.config import Variant, effective_betas, gradient_units, saekit_beta
from saekit.reproduce.gsae.verdicts import (claim_groups, combine, decide, dead_verdict, difference_of_means,
                                            pool_choices, pooled_difference, select_beta)

NAN = math.nan


# --- decide: one verdict from 95% intervals -------------------------------------------------------

def test_decide_every_interval_below_zero_is_reproduced():
    verdict, why = decide([("seed", -0.05, -0.01), ("context", -0.04, -0.02)])
    assert verdict == "reproduced" and "below 0" in why


def test_decide_an_interval_crossing_zero_is_undecided_and_names_it():
    verdict, why = decide([("seed", -0.05, 0.01), ("context", -0.04, -0.02)])
    assert verdict == "undecided at this power"
    assert "seed interval crosses 0" in why and "context" not in why.split(":")[0]


def test_decide_every_interval_on_the_wrong_side_is_not_reproduced():
    verdict, _ = decide([("seed", 0.01, 0.05), ("context", 0.02, 0.03)])
    assert verdict == "not reproduced"


def test_decide_intervals_that_disagree_in_sign_are_undecided():
    verdict, why = decide([("seed", -0.05, -0.01), ("context", 0.01, 0.02)])
    assert verdict == "undecided at this power" and "disagree" in why


def test_decide_a_missing_interval_is_undecided():
    for lo, hi in ((NAN, NAN), (None, None), (-0.2, NAN)):
        verdict, why = decide([("seed", lo, hi), ("context", -0.04, -0.02)])
        assert verdict == "undecided at this power" and "no seed interval" in why
    assert decide([])[0] == "undecided at this power"


def test_decide_claim_above_flips_the_sides():
    assert decide([("latents", 0.1, 0.3)], "above")[0] == "reproduced"
    assert decide([("latents", -0.3, -0.1)], "above")[0] == "not reproduced"
    assert decide([("latents", -0.1, 0.3)], "above")[0] == "undecided at this power"
    assert decide([("latents", 0.1, 0.3)], "below")[0] == "not reproduced"


def test_combine_over_k():
    assert combine({16: "reproduced", 32: "reproduced"}) == "reproduced"
    assert combine({16: "reproduced", 32: "undecided at this power"}) == "undecided at this power"
    assert combine({16: "reproduced", 32: "not reproduced"}) == "not reproduced"
    assert combine({}) == "undecided at this power"


# --- choosing β on validation ------------------------------------------------------------------

def test_select_beta_takes_the_lowest_validation_delta_ce():
    assert select_beta({1.0: 0.30, 4.0: 0.25, 16.0: 0.40}) == 4.0


def test_select_beta_ignores_missing_values_and_breaks_ties_towards_small_beta():
    assert select_beta({1.0: None, 4.0: NAN, 16.0: 0.5}) == 16.0
    assert select_beta({8.0: 0.2, 2.0: 0.2}) == 2.0
    with pytest.raises(SaekitError):
        select_beta({1.0: NAN})


def test_pool_choices_keeps_the_better_family_per_k():
    chosen = {(16, "norm"): 2.0, (16, "raw"): 12.0, (32, "norm"): 0.5, (32, "raw"): 3.0}
    val = {(16, "norm"): 0.30, (16, "raw"): 0.25, (32, "norm"): 0.10, (32, "raw"): NAN}
    assert pool_choices(chosen, val) == {(16, "raw"): 12.0, (32, "norm"): 0.5}
    # a tie goes to the first family of FAMILIES ("norm"); a k with no finite value is an error
    assert pool_choices({(8, "norm"): 1.0, (8, "raw"): 3.0}, {(8, "norm"): 0.2, (8, "raw"): 0.2}) == {(8, "norm"): 1.0}
    with pytest.raises(SaekitError, match="k=8"):
        pool_choices({(8, "raw"): 3.0}, {(8, "raw"): None})


def test_claim_groups_per_family_or_pooled():
    cfg = gsae.SCALES["smoke"]
    chosen = {(16, "norm"): 2.0, (16, "raw"): 10.0}
    per_family = claim_groups(cfg, chosen)
    assert per_family == {"norm": {16: Variant("norm", 16, 2.0)}, "raw": {16: Variant("raw", 16, 10.0)}}
    pooled = claim_groups(replace(cfg, pool_families=True), {(16, "raw"): 10.0})
    assert pooled == {"best": {16: Variant("raw", 16, 10.0)}}


# --- intervals ---------------------------------------------------------------------------------

def test_dead_verdict():
    assert dead_verdict([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])[0] == "undecided at this power"
    v, _, d = dead_verdict([0.01, 0.012, 0.011], [0.05, 0.06, 0.055])
    assert v == "reproduced" and d["hi"] < 0 and d["n"] == 3
    assert dead_verdict([0.05, 0.06, 0.055], [0.01, 0.012, 0.011])[0] == "not reproduced"
    assert dead_verdict([0.01, 0.09, 0.02], [0.05, 0.01, 0.06])[0] == "undecided at this power"
    assert dead_verdict([0.01], [0.05])[0] == "undecided at this power"  # one seed: no t-interval


def test_difference_of_means_interval():
    a = [1.0 + 0.01 * i for i in range(50)]
    b = [0.5 + 0.01 * i for i in range(40)]
    d = difference_of_means(a, b, 500, seed=0)
    assert d["value"] == pytest.approx(sum(a) / 50 - sum(b) / 40)
    assert 0 < d["lo"] < d["value"] < d["hi"] < 1
    e = difference_of_means([NAN, 1.0], [], 100, seed=0)
    assert math.isnan(e["value"]) and e["n_a"] == 1 and e["n_b"] == 0


def _per_context(ce_sae: list[float], count: list[float]) -> dict:
    return {"per_context": {"count": count, "ce_sae": ce_sae, "kl_sae": [0.0] * len(count)}}


def test_pooled_difference_is_the_seed_mean_of_per_token_differences():
    count = [10.0, 20.0, 30.0]
    # seed 0: a − b = 0.1 nats on every token; seed 1: 0.3 -> seed mean 0.2, with no spread over contexts
    a = [_per_context([c * 1.1 for c in count], count), _per_context([c * 1.3 for c in count], count)]
    b = [_per_context([c * 1.0 for c in count], count), _per_context([c * 1.0 for c in count], count)]
    d = pooled_difference(a, b, "ce_sae", n_boot=200)
    assert d["value"] == pytest.approx(0.2)
    assert d["lo"] == pytest.approx(0.2) and d["hi"] == pytest.approx(0.2)
    with pytest.raises(SaekitError):
        pooled_difference(a, [b[0], _per_context([1.0, 1.0], [1.0, 1.0])], "ce_sae", n_boot=10)


# --- raw β: the paper's score, exactly --------------------------------------------------------

def test_raw_beta_round_trip_through_the_saved_units():
    units = {"mean_grad_norm": 0.25}
    v = Variant("raw", 32, 10.0)
    b = saekit_beta(v, units)
    assert b == pytest.approx(2.5)
    sae_cfg = SAEConfig(architecture="gradient_topk", beta=b, input_scale=0.5, grad_scale=0.5)  # s·G = 0.25
    assert effective_betas(sae_cfg) == {"beta_norm": pytest.approx(2.5), "beta_raw": pytest.approx(10.0)}
    assert saekit_beta(Variant("norm", 32, 4.0), units) == 4.0
    assert saekit_beta(Variant("topk", 32), units) is None


def _grad_store(path: Path, n: int = 2048, d: int = 8) -> Path:
    g = torch.Generator().manual_seed(3)
    writer = StoreWriter(path / "train", {"split": "train"})
    for _ in range(4):
        acts = torch.randn(n // 4, d, generator=g) * 7.0 + 2.0
        grads = torch.randn(n // 4, d, generator=g) * 0.05
        writer.write_shard(acts, grads, 1)
    writer.finish()
    return path


def test_gradient_units_match_the_trainer_so_raw_beta_is_exact(tmp_path):
    from saekit.train.trainer import train

    store = _grad_store(tmp_path / "store")
    units = gradient_units(store, init_samples=512)
    beta_raw = 7.0
    cfg = TrainConfig(sae=SAEConfig(architecture="gradient_topk", n_latents=16, k=2, beta=beta_raw * units["mean_grad_norm"]),
                      data=DataConfig(source="store", store=str(store)), steps=1, batch_size=64, init_samples=512,
                      warmup_steps=0, out_dir=str(tmp_path / "run"), progress=False)
    sae = train(cfg)
    assert sae.cfg.input_scale == pytest.approx(units["input_scale"], rel=1e-12)
    assert sae.cfg.grad_scale == pytest.approx(units["grad_scale"], rel=1e-12)
    assert effective_betas(sae.cfg)["beta_raw"] == pytest.approx(beta_raw, rel=1e-9)
    # another data-order seed sees other batches first, but fits the same grad_scale (same β meaning)
    other = train(replace(cfg, data=replace(cfg.data, store_seed=3), out_dir=str(tmp_path / "run3")))
    assert other.cfg.grad_scale == sae.cfg.grad_scale
    # and the selection is the paper's: top-k of z (1 + β_raw |d_i · g|), g in model units
    x, g = torch.randn(32, 8) * 7.0, torch.randn(32, 8) * 0.05
    with torch.no_grad():
        z = sae.pre_activations(x * sae.cfg.input_scale)
        score = z * (1 + beta_raw * (g @ sae.W_dec.T).abs())
        want = score.topk(2, dim=-1).indices.sort(-1).values
        got = (sae.encode(x, g) > 0)
    chosen = torch.zeros_like(got).scatter_(-1, want, True) & (z > 0)
    assert torch.equal(got, chosen)


def test_gradient_units_refuse_a_store_without_gradients(tmp_path):
    writer = StoreWriter(tmp_path / "s" / "train", {"split": "train"})
    writer.write_shard(torch.randn(64, 4), None, 1)
    writer.finish()
    with pytest.raises(SaekitError, match="no gradients"):
        gradient_units(tmp_path / "s", 64)


def test_scales_are_consistent():
    for name, cfg in gsae.SCALES.items():
        gsae.check(cfg)
        assert cfg.lm.with_grads
    cpu, gpu = gsae.SCALES["cpu"], gsae.SCALES["gpu"]
    assert cpu.train_tokens >= 1_000_000 and set(cpu.ks) == {16, 32, 64} and len(cpu.seeds) == 3
    assert cpu.norm_betas and cpu.raw_betas and cpu.steer_latents >= 64 and cpu.dead_window_tokens >= 1_000_000
    assert gpu.train_tokens >= 20_000_000 and gpu.device == "cuda" and gpu.lm.device == "cuda"
    with pytest.raises(SaekitError):
        gsae.check(replace(cpu, lm=replace(cpu.lm, with_grads=False)))


# --- the smoke scale end to end -----------------------------------------------------------------

def _fail(*_a, **_k):
    raise AssertionError("a rerun must reuse the work, not recompute it")


@pytest.mark.slow
def test_smoke_end_to_end_and_a_rerun_reuses_everything(tmp_path, monkeypatch):
    from saekit.reproduce.command import main

    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["gsae", "--scale", "smoke", "--work", str(work), "--out", str(out)]
    main(argv)
    readme = (out / "README.md").read_text()
    for f in ("gsae_test.csv", "gsae_summary.csv", "gsae_validation.csv", "gsae_steering.csv", "gsae.json",
              "fidelity_vs_k.png", "dce_vs_topk.png", "validation_beta.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    result = json.loads((out / "gsae.json").read_text())
    claims = result["claims"]
    assert {(c["claim_key"], c["family"]) for c in claims} == {(c, f) for c in ("delta_ce", "dead", "steering")
                                                              for f in ("norm", "raw")}
    verdicts = {"reproduced", "not reproduced", "undecided at this power"}
    table = readme.split("## Verdicts", 1)[1].split("###", 1)[0]
    for c in claims:
        assert c["verdict"] in verdicts
        assert c["claim"] in table and f"**{c['verdict']}**" in table
    assert "saekit reproduce gsae --scale smoke" in readme and "Smoke scale" in readme
    assert "raw" in readme and "normalised" in readme
    # every g-SAE on test is there with and without gradients, every seed
    sae_names = {r["sae"] for r in result["test"]}
    assert any(n.endswith("+grads") for n in sae_names) and any(n.endswith("@bare") for n in sae_names)
    assert {r["seed"] for r in result["test"]} == set(gsae.SCALES["smoke"].seeds)
    raw = [r for r in result["test"] if r["family"] == "raw"]
    assert raw and all(r["beta_raw"] == pytest.approx(r["beta"], rel=1e-4) for r in raw)

    # the rerun: nothing is harvested, trained, spliced or steered again, and no model is loaded
    saes = sorted(work.glob("runs/*/sae/model.safetensors"))
    evals = sorted(work.glob("eval/**/*.json"))
    assert saes and evals
    before = {p: p.stat().st_mtime_ns for p in [*saes, *evals]}
    (out / "README.md").unlink()
    for target in ("saekit.train.trainer.train", "saekit.data.cache_command._fill", "saekit.eval.splice.evaluate_splice",
                   "saekit.eval.steering.steer_latents", "saekit.data.models.load_model"):
        monkeypatch.setattr(target, _fail)
    main(argv)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert (out / "README.md").read_text().split("## Verdicts")[1] == readme.split("## Verdicts")[1]
