"""`saekit reproduce architectures`: the choices it makes (seeded value, frontier inversion, recipes) on
hand cases, and (slow) the smoke scale end to end on the real model, resumed from its cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from saekit.reproduce import architectures as archs
from saekit.reproduce import gated


def test_nearest_is_on_a_log_scale_and_never_picks_zero():
    assert archs.nearest({10: 40.0, 20: 25.0, 40: 12.0}, 20.0) == 20  # |log 25/20| < |log 12/20|
    # linear distance would pick L0 11 (9 < 10); on a log scale 30 is nearer (30/20 = 1.5 < 20/11 = 1.82)
    assert archs.nearest({1.0: 11.0, 3.0: 30.0}, 20.0) == 3.0
    assert archs.nearest({1.0: 0.0, 3.0: 500.0}, 20.0) == 3.0


def test_l0_at_inverts_the_log_linear_frontier():
    # LR = 0.9 at L0 10, 0.95 at L0 100: LR = a + b ln L0 with b = 0.05 / ln 10, so LR 0.925 sits at
    # L0 = sqrt(10 * 100) and LR 0.95 at 100
    out = archs.l0_at([(10.0, 0.9), (100.0, 0.95)], np.array([0.925, 0.95]))
    assert out == pytest.approx([math.sqrt(1000.0), 100.0])
    assert archs.l0_at([(10.0, 0.95), (100.0, 0.9)], np.array([0.92])) is None  # LR falling with L0
    assert archs.l0_at([(10.0, 0.9)], np.array([0.92])) is None


def test_recipes_are_the_gated_ones_and_use_only_their_settings(tmp_path):
    from saekit.settings import check_settings_used

    cfg, gcfg = archs.SCALES["cpu"], gated.SCALES["cpu"]
    for arch, values in cfg.grids:
        tc = archs.train_config(cfg, gcfg, tmp_path / "store", tmp_path, arch, values[0], 1)
        check_settings_used(tc)
        assert (tc.steps, tc.batch_size, tc.lr, tc.seed, tc.data.store_seed) == (gcfg.steps, gcfg.batch_size, gcfg.lr, 1, 1)
        assert tc.sae.n_latents == gcfg.gated_width
        field = archs.SPARSITY_FIELD[arch]
        assert getattr(tc.sae, field) == values[0] and isinstance(getattr(tc.sae, field), int if field == "k" else float)
        assert tc.resample_every == (gcfg.resample_every if arch == "jumprelu" else 0)
        assert tc.out_dir.endswith(archs.run_name(arch, values[0], 1))


def _spliced(l0: float, ce_sae: list[float]) -> dict:
    n = len(ce_sae)
    clean, zero = [1.0] * n, [3.0] * n
    lr = (sum(zero) - sum(ce_sae)) / (sum(zero) - sum(clean))
    return {"l0": l0, "loss_recovered": lr, "per_context": {"count": [1] * n, "ce_clean": clean, "ce_zero": zero,
                                                            "ce_sae": ce_sae}}


def test_analyse_gives_l0_at_matched_loss_recovered_and_the_ratio_to_gated():
    """Two hand frontiers with the same slope in log L0: topk needs twice Gated's L0 at every level."""
    cfg = archs.ArchitecturesScale(grids=(("topk", (10, 40)),), seeds=(0,), n_boot=200, match_range=(1.0, 1000.0))
    # gated: LR 0.90 at L0 10, 0.96 at L0 40; topk: the same LRs at L0 20 and 80 (per context CE constant)
    spliced = {"topk-k_10-s0": _spliced(20.0, [1.2] * 8), "topk-k_40-s0": _spliced(80.0, [1.08] * 8)}
    reference = {"gated-l1_2-s0": _spliced(10.0, [1.2] * 8) | {"architecture": "gated"},
                 "gated-l1_4-s0": _spliced(40.0, [1.08] * 8) | {"architecture": "gated"}}
    rows = [{"name": n, "architecture": "topk", "value": float(n.split("_")[1].split("-")[0]), "seed": 0,
             "l0": s["l0"], "loss_recovered": s["loss_recovered"], "fvu": 0.1, "gamma": 1.0, "kl": 0.1,
             "dead_fraction": 0.0} for n, s in spliced.items()]
    out = archs.analyse(cfg, rows, spliced, reference)
    assert not out["extrapolated"] and len(out["matched"]) == 3
    for entry in out["matched"]:
        assert entry["topk"]["value"] == pytest.approx(2 * entry["gated"]["value"])
        assert entry["topk_vs_gated"]["value"] == pytest.approx(2.0)
        # constant per-context CE: every bootstrap resample gives the same fits
        assert entry["topk_vs_gated"]["lo"] == pytest.approx(2.0) and entry["topk_vs_gated"]["hi"] == pytest.approx(2.0)
    assert 0.90 < out["matched"][0]["loss_recovered"] < out["matched"][-1]["loss_recovered"] < 0.96


@pytest.mark.slow
def test_smoke_end_to_end_and_resumes(tmp_path, monkeypatch):
    from saekit.cli import main

    work, out = tmp_path / "work", tmp_path / "out"
    main(["reproduce", "architectures", "--scale", "smoke", "--work", str(work), "--out", str(out)])
    readme = (out / "README.md").read_text()
    assert "saekit reproduce architectures --scale smoke" in readme and "Synthetic dictionary recovery" in readme
    assert (out / "runs.csv").is_file() and (out / "synthetic.csv").is_file() and (out / "frontier.png").is_file()
    result = json.loads((out / "results.json").read_text())
    smoke = archs.SCALES["smoke"]
    n_grid = sum(len(v) for _, v in smoke.grids)
    assert len(result["rows"]) == n_grid + len(smoke.grids) * (len(smoke.seeds) - 1)
    assert {r["architecture"] for r in result["rows"]} == {a for a, _ in smoke.grids}
    assert all(r["test_tokens"] > 0 and r["l0"] >= 0 and 0 <= r["dead_fraction"] <= 1 for r in result["rows"])
    assert len(result["synthetic"]) == len(smoke.synthetic) * len(smoke.synthetic_seeds)
    assert all(0 <= s["chance"] <= 1 and 0 <= s["dict_mcc"] <= 1 for s in result["synthetic"])
    hier = [s for s in result["synthetic"] if s["generator"] == "hierarchical"]
    assert hier and all(0 <= s["parent_f1"] <= 1 and 0 <= s["child_f1"] <= 1 for s in hier)
    assert "firing F1 parents · children" in readme

    import saekit.eval.splice as splice
    import saekit.train.trainer as trainer

    def refuse(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(trainer, "train", refuse)
    monkeypatch.setattr(splice, "evaluate_splice", refuse)
    main(["reproduce", "architectures", "--scale", "smoke", "--work", str(work), "--out", str(out)])
    assert json.loads((out / "results.json").read_text())["rows"] == result["rows"]
