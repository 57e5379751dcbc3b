"""`saekit plot RUN_DIR`: a PNG of a tiny run's training curves; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

import saekit
from saekit.cli import main
from saekit.report.curves import PANELS, read_metrics


def test_plot_writes_a_png_for_a_tiny_run(tmp_path, capsys):
    saekit.train(torch.randn(600, 8), architecture="gated", n_latents=16, steps=8, batch_size=64, log_every=2,
                 init_samples=128, progress=False, out_dir=str(tmp_path / "run"))
    main(["plot", str(tmp_path / "run")])
    png = tmp_path / "run" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "4 rows" in capsys.readouterr().out
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert {k for k, _, _ in PANELS} <= set(rows[0]) and {"mse", "l1", "aux"} <= set(rows[0])
    main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").is_file()


def test_plot_tolerates_a_cut_last_line_and_refuses_no_run(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0, "l0": 3, "fvu": 0.5, "dead_fraction": 0,
                                                   "lr": 1e-3}) + "\n" + '{"step": 2, "lo')
    main(["plot", str(run)])
    assert (run / "curves.png").is_file()
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path / "none")])
    assert e.value.code == 2 and "no metrics.jsonl" in capsys.readouterr().err
