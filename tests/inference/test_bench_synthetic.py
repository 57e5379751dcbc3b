"""`saekit bench-synthetic` end to end on a tiny budget: every table and plot is written."""

from __future__ import annotations

import json
import math

import pytest

from saekit.cli import main as cli_main
from saekit.errors import SaekitError
from saekit.inference import bench_synthetic


def test_tiny_run_writes_everything(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    cli_main(["bench-synthetic", "--seeds", "1", "--n-train", "128", "--n-test", "128",
              "--hyper.steps", "20", "--hyper.mlp-hidden", "16", "--hyper.mlp-hidden-known-codes", "16",
              "--hyper.ito-max-iters", "50", "--hyper.sc-rounds", "3", "--hyper.sc-code-iters", "5",
              "--grid-n", "16", "32", "--grid-m", "8", "--grid-steps", "10", "--grid-sc-rounds", "2",
              "--out-dir", str(out)])
    names = {p.name for p in out.iterdir()}
    assert {"main_runs.csv", "main_summary.csv", "main_table.md", "grid_runs.csv", "grid_summary.csv",
            "grid_table.md", "results.json", "main_quality_vs_flops.png", "grid_mcc.png"} <= names
    doc = json.loads((out / "results.json").read_text())
    methods = {(s["regime"], s["method"]) for s in doc["main_summary"]}
    assert {("known_codes", "SAE encoder"), ("known_dictionary", "FISTA (true D)"), ("unknown", "SAE"),
            ("unknown", "SAE + ITO (FISTA)"), ("unknown", "SC")} <= methods
    assert {(s["N"], s["M"]) for s in doc["grid_summary"]} == {(16, 8), (32, 8)}
    for s in doc["main_summary"] + doc["grid_summary"]:
        assert 0.0 <= s["code_mcc_mean"] <= 1.0 and s["infer_flops_per_sample_mean"] > 0
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert "code MCC (paper)" in capsys.readouterr().out


def test_summary_mean_and_std() -> None:
    rows = [{"regime": "r", "method": "m", "N": 1, "M": 1, "K": 1, "code_mcc": v, "dict_mcc": math.nan,
             "l0": 1.0, "train_flops": 0, "infer_flops_per_sample": 1, "total_flops": 1, "seconds": 0.0}
            for v in (0.5, 0.7)]
    (s,) = bench_synthetic.summarise(rows)
    assert s["code_mcc_mean"] == pytest.approx(0.6) and s["code_mcc_std"] == pytest.approx(0.1414, abs=1e-4)
    assert math.isnan(s["dict_mcc_mean"]) and s["seeds"] == 2


def test_bad_config(tmp_path) -> None:
    with pytest.raises(SaekitError, match="k <= n"):
        bench_synthetic.run(bench_synthetic.Cfg(k=20, out_dir=tmp_path))
