"""`saekit eval`'s reconstruction pass counts every held-out token once, and reports how many it saw."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from saekit.config import SAEConfig, SyntheticConfig
from saekit.data.store import StoreSource, StoreWriter
from saekit.data.synthetic import SyntheticSource
from saekit.eval.metrics import ReconstructionStats
from saekit.eval.reconstruction import evaluate_reconstruction
from saekit.sae import build_sae


@pytest.fixture
def store(tmp_path):
    """37 held-out tokens in four shards of 5, 0, 7 and 25 rows."""
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(37, 8, generator=gen)
    w = StoreWriter(tmp_path / "store" / "eval", {"split": "eval"})
    for a, b in ((0, 5), (5, 5), (5, 12), (12, 37)):
        w.write_shard(acts[a:b], None, 1)
    w.finish()
    return tmp_path / "store", acts


def sae():
    return build_sae(SAEConfig(architecture="relu", d_in=8, n_latents=12), seed=3)


def direct(model, x):
    stats = ReconstructionStats(model.cfg.n_latents)
    with torch.no_grad():
        x_hat, f = model(x)
    stats.update(x, x_hat, f)
    return stats.summary(), stats.density()


@pytest.mark.parametrize("n_tokens, expected", [(1000, 37), (37, 37), (20, 20)])
def test_each_store_token_counts_once(store, n_tokens, expected):
    path, acts = store
    model = sae()
    got, density = evaluate_reconstruction(model, StoreSource(path / "eval"), n_tokens, batch_size=16)
    want, want_density = direct(model, acts[:expected])  # the store's order: shard by shard
    assert got["tokens"] == expected
    for key in ("l0", "mse", "fvu", "gamma", "dead_fraction"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-9), key
    torch.testing.assert_close(density, want_density)


def test_synthetic_data_gives_exactly_the_tokens_asked_for():
    got, _ = evaluate_reconstruction(sae(), SyntheticSource(SyntheticConfig(n_features=12, d=8, k=2), "eval"),
                                     100, batch_size=64)
    assert got["tokens"] == 100


def test_eval_command_on_a_small_store_reports_the_true_count(store, tmp_path, capsys):
    from saekit.cli import main

    path, acts = store
    model = sae()
    model.save(tmp_path / "run" / "sae")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"data": {"source": "store", "store": str(path)}}))
    main(["eval", str(tmp_path / "run" / "sae"), "--tokens", "4096", "--batch-size", "16", "--no-splice"])
    assert "holds 37 tokens, fewer than --tokens 4096" in capsys.readouterr().out
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["tokens"] == 37
    assert result["fvu"] == pytest.approx(direct(model, acts)[0]["fvu"], rel=1e-5)


def test_eval_on_a_store_without_lm_metadata_skips_the_splice_and_says_why(store, tmp_path, capsys):
    """A store written without model/hookpoint in its meta (e.g. from arrays): eval reports the reconstruction
    metrics, notes the skipped splice with its reason (on screen and in eval.json), and exits normally."""
    from saekit.cli import main

    path, acts = store
    model = sae()
    model.save(tmp_path / "run" / "sae")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"data": {"source": "store", "store": str(path)}}))
    main(["eval", str(tmp_path / "run" / "sae"), "--tokens", "4096", "--batch-size", "16"])
    out = capsys.readouterr().out
    assert "splice evaluation (loss recovered, KL) was skipped" in out and "does not name model, hookpoint" in out, out
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert "splice" not in result and "does not name model, hookpoint" in result["splice_skipped"]
    assert result["tokens"] == 37
    want = direct(model, acts)[0]
    for key in ("fvu", "mse", "l0"):
        assert result[key] == pytest.approx(want[key], rel=1e-5), key
