"""`saekit reproduce decoupled-lm`: hyperparameters matched to L0 on validation, per-context sums, the
verdict rule, and (slow) the smoke scale end to end on the real model, resumed from its cache."""

from __future__ import annotations

import csv
import functools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from saekit.errors import SaekitError
from saekit.reproduce import common
from saekit.reproduce import decoupled_lm as dlm
from saekit.reproduce.decoupled_lm import config, methods, pipeline, search, verdicts


# ---------------------------------------------------------------------------------------------------------
# choosing on validation

def test_choose_uses_the_given_validation_l0_where_test_would_pick_otherwise():
    # λ -> L0 on validation and on test (hand-made): the target is 30
    validation = {1.0: 40.0, 2.0: 25.0, 4.0: 12.0}
    test = {1.0: 33.0, 2.0: 20.0, 4.0: 10.0}
    assert common.choose(validation, 30.0) == 2.0  # |log 25/30| = 0.18 < |log 40/30| = 0.29
    assert common.choose(test, 30.0) == 1.0  # what test would have picked: the two differ
    assert common.choose({1.0: 20.0, 4.0: 44.0}, 30.0) == 4.0  # log scale: 44/30 = 1.47 < 30/20 = 1.5
    assert common.choose({3.0: 0.0, 2.0: 1.0}, 30.0) == 2.0  # L0 = 0 is far from anything, not an error


def test_search_reaches_the_target_on_a_power_law_and_on_integers():
    calls = []

    def l0_of_lambda(lam: float) -> float:
        calls.append(lam)
        return 100.0 / lam ** 1.5

    pts = search.search(l0_of_lambda, 12.5, 2.0, evals=4, tolerance=0.05)
    best = common.choose(pts, 12.5)
    assert search.matched(pts[best], 12.5, 0.05) and abs(best - 4.0) < 0.2
    assert len(calls) <= 3  # start, one slope-(-1) step, then the measured slope lands on it
    # k -> L0 rises (MP-like: some atoms picked twice); the integer search never repeats a k
    seen = []
    pts = search.search(lambda k: seen.append(k) or 0.8 * k, 24.0, 24.0, evals=4, tolerance=0.02, integer=True,
                     slope=1.0, bounds=(1, 64))
    assert len(seen) == len(set(seen)) and common.choose(pts, 24.0) == 30.0
    # stops at once when an earlier point (another target's) is already within tolerance
    assert search.search(lambda k: 1 / 0, 10.0, 3.0, evals=4, tolerance=0.1, points={5.0: 10.5}) == {5.0: 10.5}


class _Run:
    def log(self, message: str) -> None:
        pass


def test_select_measures_on_the_validation_rows_only(tmp_path):
    """The pipeline's selection step: targets and every family's choice come from validation activations.
    Here the test rows are 3x the validation rows, so choosing on them would land elsewhere."""
    from saekit import build_sae
    from saekit.config import SAEConfig
    from saekit.inference.lm import FrozenDictionary

    torch.manual_seed(0)
    sae = build_sae(SAEConfig(architecture="gated", d_in=8, n_latents=24, l1_coeff=1.0)).eval().requires_grad_(False)
    with torch.no_grad():
        sae.b_gate.fill_(-0.3)
    cfg = dlm.DecoupledLMScale(search_evals=3, fista_iters=50, ito_iters=10, mlp_steps=3, mlp_batch=64,
                               mlp_seeds=(0,), mlp_search_trainings=1, lambda_start=0.5)
    enc = methods.Encoders(cfg, sae, FrozenDictionary.from_sae(sae))
    x_val = torch.randn(256, 8)
    x_test = 3.0 * x_val
    sel = pipeline._select(cfg, _Run(), tmp_path / "select", enc, lambda: x_val, lambda: torch.randn(128, 8), tmp_path)
    assert sel["sae_l0"] == pytest.approx(enc.l0(methods.Spec("sae"), x_val))
    for fam in ("omp", "mp", "fista+refit", "sae+ito"):
        pts = {p: l0 for p, l0 in sel["families"][fam]["points"]}
        for p, l0 in pts.items():  # every recorded L0 is the validation L0 of that parameter
            assert l0 == pytest.approx(enc.l0(methods.Spec(fam, p), x_val))
        for ratio, chosen in sel["families"][fam]["chosen"].items():
            assert chosen == common.choose(pts, sel["targets"][ratio])
    lam = sel["families"]["fista+refit"]["chosen"]["1.0"]
    on_test = search.search(lambda p: enc.l0(methods.Spec("fista+refit", p), x_test), sel["targets"]["1.0"], 0.5,
                         evals=3, tolerance=0.1)
    assert common.choose(on_test, sel["targets"]["1.0"]) != pytest.approx(lam)  # the test rows would pick otherwise
    # cached: a second call computes nothing
    again = pipeline._select(cfg, _Run(), tmp_path / "select", enc, lambda: 1 / 0, lambda: 1 / 0, tmp_path)
    assert again == sel


# ---------------------------------------------------------------------------------------------------------
# per-context sums, FVU, the verdict rule

def test_context_sums_and_fvu_denominator_match_direct_computation():
    torch.manual_seed(1)
    x = torch.randn(10, 4) * 3 + 1
    x_hat = x + 0.1 * torch.randn(10, 4)
    codes = torch.relu(torch.randn(10, 6))
    counts = [3, 0, 7]
    s = methods.context_sums(x, x_hat, codes, counts)
    assert s["n"] == [3.0, 0.0, 7.0]
    assert s["sse"][2] == pytest.approx(float((x[3:] - x_hat[3:]).pow(2).sum()), rel=1e-6)
    assert s["l0"][0] == float((codes[:3] > 0).sum()) and s["sse"][1] == 0.0
    acts = methods.activation_sums(x, counts)
    var = methods.variance_per_context(acts, [0, 1, 2])
    direct = float((x.double() - x.double().mean(0)).pow(2).sum())
    assert var.sum() == pytest.approx(direct, rel=1e-9)
    # over a subset of contexts the mean is that subset's (DESIGN.md: x̄ over the evaluation set)
    sub = methods.variance_per_context(acts, [2])
    assert sub.sum() == pytest.approx(float((x[3:].double() - x[3:].double().mean(0)).pow(2).sum()), rel=1e-9)


def _ci(lo: float, hi: float) -> dict[str, float]:
    return {"value": (lo + hi) / 2, "lo": lo, "hi": hi}


def test_compare_needs_both_intervals_and_no_more_l0():
    below, above, across = _ci(-0.2, -0.1), _ci(0.1, 0.2), _ci(-0.1, 0.1)
    assert verdicts.compare(1.05, below, below, 0.1) == "better"
    assert verdicts.compare(0.5, below, below, 0.1) == "better"  # fewer latents and better: dominates
    assert verdicts.compare(1.5, below, below, 0.1) == "undecided"  # better, but with 1.5x the latents
    assert verdicts.compare(1.0, below, across, 0.1) == "undecided"  # KL not resolved
    assert verdicts.compare(1.0, below, above, 0.1) == "worse"  # better FVU, worse KL: not "lower FVU and KL"
    assert verdicts.compare(2.0, above, across, 0.1) == "worse"
    assert verdicts.compare(0.5, above, above, 0.1) == "undecided"  # worse, but on half the latents


def test_replay_refuses_rows_it_did_not_capture():
    x = torch.randn(5, 3)
    replay = pipeline._Replay([x], [x * 2], "m")
    out, codes = replay(x.clone())
    assert torch.equal(out, x * 2) and codes is None
    with pytest.raises(SaekitError, match="not the captured"):
        replay(x)  # a second batch that was never captured
    with pytest.raises(SaekitError, match="not the captured"):
        pipeline._Replay([x], [x], "m")(x + 1.0)


def test_scales_are_consistent():
    for name, cfg in dlm.SCALES.items():
        config.validate(cfg)
        assert cfg.gated_scale in __import__("saekit.reproduce.gated", fromlist=["SCALES"]).SCALES
    assert dlm.SCALES["cpu"].gated_work == "runs/reproduce/gated-cpu" and dlm.SCALES["cpu"].sae_width == 0
    assert dlm.SCALES["cpu"].test_contexts >= 256


# ---------------------------------------------------------------------------------------------------------
# the smoke scale, end to end on the real model

@pytest.mark.slow
def test_smoke_end_to_end_then_resumed_from_cache(tmp_path, monkeypatch):
    import saekit.data.models as models
    import saekit.inference.mlp as mlp
    from saekit.reproduce.common import Run

    monkeypatch.setattr(models, "load_model", functools.lru_cache(maxsize=None)(models.load_model))
    cfg = dlm.SCALES["smoke"]

    def invoke() -> Path:
        run = Run(name="decoupled-lm", scale="smoke", out=tmp_path / "out", work=tmp_path / "work",
                  command="saekit reproduce decoupled-lm --scale smoke")
        return dlm.reproduce(cfg, run)

    readme = invoke()
    text = readme.read_text()
    out = tmp_path / "out"
    for f in ("methods.csv", "results.json", "fvu_vs_l0.png", "kl_vs_l0.png", "fvu_vs_flops.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    results = json.loads((out / "results.json").read_text())
    claims = results["claims"]
    assert len(claims) == 4
    assert all(c["verdict"] in ("reproduced", "not reproduced", "undecided at this power") for c in claims)
    assert all(f"**{c['verdict']}**" in text for c in claims)
    assert "saekit reproduce decoupled-lm --scale smoke" in text and "Smoke scale" in text
    rows = list(csv.DictReader((out / "methods.csv").open()))
    names = {r["method"] for r in rows}
    assert "sae" in names and any(n.startswith("omp") for n in names) and any(n.startswith("mlp from sae") for n in names)
    spliced = [r for r in rows if r["spliced"] == "True"]
    assert len(spliced) == 5 + len(cfg.mlp_seeds)  # sae, sae+refit, omp, fista+refit, sae+ito, MLP seeds
    for r in spliced:
        assert float(r["kl_lo"]) <= float(r["kl"]) <= float(r["kl_hi"])
        assert math.isfinite(float(r["fvu"])) and float(r["l0"]) > 0
    # every hyperparameter is the validation-nearest of the points evaluated on validation
    sel = results["selection"]
    for fam, s in sel["families"].items():
        pts = {p: l0 for p, l0 in s["points"]}
        for ratio, chosen in s["chosen"].items():
            assert chosen == common.choose(pts, sel["targets"][ratio])
    assert results["results"]["reference"]["test_contexts"] == cfg.test_contexts

    # a rerun computes nothing: no encoding, no MLP training, and the same numbers
    def boom(*args, **kwargs):
        raise AssertionError("recomputed on a rerun")

    monkeypatch.setattr(methods.Encoders, "encode", boom)
    monkeypatch.setattr(mlp, "train_frozen_dictionary", boom)
    again = invoke()
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["results"]["rows"] == results["results"]["rows"]
    assert [c["verdict"] for c in rerun["claims"]] == [c["verdict"] for c in claims]
    assert again.read_text().split("## Verdicts")[1] == text.split("## Verdicts")[1]


def test_a_longer_frozen_sae_is_its_own_run_and_otherwise_the_gated_one(tmp_path):
    """sae_steps trains the Gated recipe longer in decoupled-lm's work folder (never resuming the Gated
    reproduction's shorter run of the same λ and seed); 0 reuses that run as it is."""
    from saekit.reproduce import gated

    gcfg = gated.SCALES["cpu"]
    own = gated.train_config(gcfg, tmp_path / "gated", "gated", 3.0, 0)
    longer = config.sae_train_config(replace(dlm.SCALES["cpu"], l1=3.0), gcfg, tmp_path / "gated", tmp_path / "dlm")
    assert longer.steps == 1000 and longer.steps * longer.batch_size >= 2_000_000
    assert Path(longer.out_dir) == tmp_path / "dlm" / "sae" / f"{Path(own.out_dir).name}-1000steps"
    assert (longer.sae, longer.data, longer.lr, longer.resample_every) == (own.sae, own.data, own.lr, own.resample_every)
    same = config.sae_train_config(replace(dlm.SCALES["cpu"], l1=3.0, sae_steps=0), gcfg, tmp_path / "gated",
                                tmp_path / "dlm")
    assert same == own
    with pytest.raises(SaekitError, match="sae_steps"):
        config.validate(replace(dlm.SCALES["cpu"], sae_steps=-1))
