from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from saekit.config import LMConfig
from saekit.data import cache_command
from saekit.data.cache_command import CacheConfig, cache
from saekit.data.harvest import harvest
from saekit.data.hookpoints import resolve_hookpoint
from saekit.data.store import StoreSource, StoreWriter, open_store_source
from saekit.data.text import contexts
from saekit.errors import SaekitError


@pytest.fixture
def cfg(tmp_path, model_dir, corpus_dir) -> CacheConfig:
    lm = LMConfig(model=str(model_dir), hookpoint="resid_post.0", corpus=str(corpus_dir), context_length=16,
                  eval_fraction=0.2, model_batch_contexts=16)
    return CacheConfig(lm=lm, out=str(tmp_path / "store"), max_tokens=0, shard_tokens=160, progress=False)


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_store_round_trips_exactly(cfg, tiny_model, tokenizer):
    cfg = replace(cfg, lm=replace(cfg.lm, with_grads=True))
    train_dir, eval_dir = cache(cfg, tiny_model, tokenizer)
    m = _manifest(train_dir)
    assert m["complete"] and m["has_grads"] and m["d_in"] == 32 and len(m["shards"]) > 3
    src = open_store_source(cfg.out, "train")
    stored = list(src.iter_all())
    hp = resolve_hookpoint(tiny_model, "resid_post.0")
    direct = list(harvest(tiny_model, hp, contexts(tokenizer, cfg.lm.corpus, "text", 16, "train", 0.2),
                          16, with_grads=True, progress=False))
    assert torch.equal(torch.cat([b.acts for b in stored]), torch.cat([h.acts for h in direct]))
    # shards hold 10 contexts, forwards 16: the summed-loss backward differs in the last bits
    torch.testing.assert_close(torch.cat([b.grads for b in stored]), torch.cat([h.grads for h in direct]))
    assert open_store_source(cfg.out, "eval").total_tokens == _manifest(eval_dir)["total_tokens"] > 0


@pytest.mark.parametrize("fp16", [False, True])
def test_writer_reader_bit_exact(tmp_path, fp16):
    gen = torch.Generator().manual_seed(0)
    shards = [(torch.randn(n, 8, generator=gen), torch.randn(n, 8, generator=gen) * 1e-6) for n in (5, 0, 7)]
    w = StoreWriter(tmp_path / "s", {"k": 1}, fp16=fp16)
    for a, g in shards:
        w.write_shard(a, g, 1)
    w.finish()
    back = list(StoreSource(tmp_path / "s").iter_all())
    for (a, g), b in zip(shards, back):
        assert torch.equal(b.acts, a.half().float() if fp16 else a) and torch.equal(b.grads, g)


def test_fp16_and_max_tokens(cfg, tiny_model, tokenizer):
    (path,) = cache(replace(cfg, split="train", fp16=True, max_tokens=100), tiny_model, tokenizer)
    src = StoreSource(path)
    assert src.total_tokens == 100 and src.sample(100).dtype == torch.float32
    assert _manifest(path)["dtype"] == "float16"


def test_max_tokens_runs_the_model_over_only_the_contexts_it_needs(cfg, tiny_model, tokenizer, monkeypatch):
    import saekit.data.harvest as harvest_mod

    seen = []
    real = harvest_mod.harvest_batch
    monkeypatch.setattr(harvest_mod, "harvest_batch", lambda m, hp, ctxs, **kw: seen.append(len(ctxs)) or real(m, hp, ctxs, **kw))
    # shards of up to 40 contexts, forwards of 4 (15 tokens each): 100 tokens need 7 contexts, not 40
    (path,) = cache(replace(cfg, split="train", max_tokens=100, shard_tokens=640, lm=replace(cfg.lm, model_batch_contexts=4)),
                    tiny_model, tokenizer)
    m = _manifest(path)
    assert m["total_tokens"] == 100 and sum(seen) <= 8 and all(n <= 4 for n in seen)
    assert m["total_contexts"] == sum(seen) == sum(s["contexts"] for s in m["shards"])


def test_interrupted_cache_resumes_to_the_same_store(cfg, tiny_model, tokenizer, monkeypatch, tmp_path):
    full = cache(replace(cfg, split="train", out=str(tmp_path / "full")), tiny_model, tokenizer)[0]
    calls = {"n": 0}
    real = StoreWriter.write_shard

    def flaky(self, *a, **k):
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if killed between shards
        calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(StoreWriter, "write_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache(replace(cfg, split="train"), tiny_model, tokenizer)
    part = tmp_path / "store" / "train"
    assert len(_manifest(part)["shards"]) == 3 and not _manifest(part)["complete"]
    with pytest.raises(SaekitError, match="incomplete"):
        StoreSource(part)
    monkeypatch.setattr(StoreWriter, "write_shard", real)
    (part / ".shard-00003.safetensors.x1.tmp").write_bytes(b"half a shard")  # as left by a SIGKILL
    cache(replace(cfg, split="train"), tiny_model, tokenizer)
    assert _manifest(part) == _manifest(full)
    assert not list(part.glob("*.tmp"))
    for s in _manifest(full)["shards"]:
        assert (part / s["file"]).read_bytes() == (full / s["file"]).read_bytes()


def test_other_settings_refused(cfg, tiny_model, tokenizer):
    cache(replace(cfg, split="train"), tiny_model, tokenizer)
    with pytest.raises(SaekitError, match="other settings"):
        cache(replace(cfg, split="train", lm=replace(cfg.lm, context_length=8)), tiny_model, tokenizer)


def test_corrupted_shard_is_detected(cfg, tiny_model, tokenizer):
    (path,) = cache(replace(cfg, split="train"), tiny_model, tokenizer)
    shard = path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    src = StoreSource(path)
    with pytest.raises(SaekitError, match="shard-00001.safetensors is corrupted"):
        for _ in src.iter_all():
            pass


def test_d_in_mismatch(cfg, tiny_model, tokenizer):
    (path,) = cache(replace(cfg, split="train"), tiny_model, tokenizer)
    with pytest.raises(SaekitError, match="d_in=32.*expects 64"):
        StoreSource(path, expected_d_in=64)


def test_shuffled_batches_cover_the_store_and_resume(cfg, tiny_model, tokenizer):
    (path,) = cache(replace(cfg, split="train"), tiny_model, tokenizer)
    src = StoreSource(path, seed=3, shards_in_memory=2)
    n = src.total_tokens
    stream = src.batches(10)
    first = [next(stream) for _ in range(n // 10)]
    got = torch.cat([b.acts for b, _ in first])
    everything = torch.cat([b.acts for b in src.iter_all()])
    assert not torch.equal(got, everything[: got.shape[0]])  # shuffled
    epoch, _ = next(src.batches(n))  # one batch of exactly one epoch: a permutation of the store
    u1, c1 = torch.unique(epoch.acts, dim=0, return_counts=True)
    u2, c2 = torch.unique(everything, dim=0, return_counts=True)
    assert torch.equal(u1, u2) and torch.equal(c1, c2)
    more = [next(stream) for _ in range(5)]  # crosses into epoch 2
    batch, pos = first[7]
    resumed = src.batches(10, json.loads(json.dumps(pos)))
    for (b_expected, p_expected) in first[8:] + more:
        b, p = next(resumed)
        assert torch.equal(b.acts, b_expected.acts) and p == p_expected


def test_cli_command(cfg, monkeypatch, capsys):
    from saekit.cli import main

    main(["cache", "--model", cfg.lm.model, "--hookpoint", "mlp_out.1", "--corpus", cfg.lm.corpus,
          "--context-length", "16", "--out", cfg.out, "--split", "train", "--max-tokens", "50", "--grads",
          "--no-progress"])
    assert "train: 50 tokens" in capsys.readouterr().out
    assert StoreSource(f"{cfg.out}/train").has_grads
    with pytest.raises(SystemExit):
        main(["cache", "--model", cfg.lm.model, "--hookpoint", "mlp_out.9", "--corpus", cfg.lm.corpus,
              "--out", cfg.out + "2"])
    assert "layer 9 out of range" in capsys.readouterr().err


def test_trainer_factory_opens_store_and_lm_sources(cfg, tiny_model, tokenizer):
    from saekit.config import DataConfig
    from saekit.data.factory import make_source

    cache(cfg, tiny_model, tokenizer)
    for split in ("train", "eval"):
        src = make_source(DataConfig(source="store", store=cfg.out), split)
        assert isinstance(src, StoreSource) and src.meta["split"] == split and src.d_in == 32
    lm_src = make_source(DataConfig(source="lm", lm=cfg.lm), "eval")
    assert lm_src.d_in == 32 and next(lm_src.batches(8))[0].acts.shape == (8, 32)


def test_fp16_overflow_refused(tmp_path):
    w = StoreWriter(tmp_path / "s", {}, fp16=True)
    with pytest.raises(SaekitError, match="float16 range"):
        w.write_shard(torch.full((2, 4), 1e6), None, 1)
    assert not list((tmp_path / "s").glob("shard-*"))


def _tree(path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_overwrite_keeps_the_old_store_when_the_new_harvest_fails(cfg, tiny_model, tokenizer, tmp_path):
    cache(cfg, tiny_model, tokenizer)
    before = _tree(tmp_path / "store")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SaekitError, match="empty"):
        cache(replace(cfg, overwrite=True, lm=replace(cfg.lm, corpus=str(tmp_path / "empty.txt"))), tiny_model, tokenizer)
    assert _tree(tmp_path / "store") == before
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["eval", "train"]
    # and a successful overwrite replaces it
    (path, _) = cache(replace(cfg, overwrite=True, lm=replace(cfg.lm, context_length=8)), tiny_model, tokenizer)
    assert _manifest(path)["meta"]["context_length"] == 8


def test_a_failed_cache_leaves_nothing_that_blocks_the_corrected_command(cfg, tiny_model, tokenizer, tmp_path):
    (tmp_path / "blank.txt").write_text("   \n\n  \t\n")
    with pytest.raises(SaekitError):
        cache(replace(cfg, lm=replace(cfg.lm, corpus=str(tmp_path / "blank.txt"))), tiny_model, tokenizer)
    assert not (tmp_path / "store").exists()
    (tmp_path / "tiny.txt").write_text("the king")
    with pytest.raises(SaekitError, match="yields only 2 tokens"):
        cache(replace(cfg, split="train", lm=replace(cfg.lm, corpus=str(tmp_path / "tiny.txt"))), tiny_model, tokenizer)
    assert not (tmp_path / "store").exists()
    cache(cfg, tiny_model, tokenizer)  # the corrected command


def test_max_tokens_bounds_the_first_shard(cfg, tiny_model, tokenizer):
    (path,) = cache(replace(cfg, split="train", max_tokens=30, shard_tokens=100_000), tiny_model, tokenizer)
    m = _manifest(path)
    assert m["total_tokens"] == 30 and m["meta"]["shard_contexts"] == 2


def test_a_store_smaller_than_one_batch_is_refused(cfg, tiny_model, tokenizer):
    (path,) = cache(replace(cfg, split="train", max_tokens=30), tiny_model, tokenizer)
    source = StoreSource(path)
    with pytest.raises(SaekitError, match="yields only 30 tokens, fewer than one batch of 64"):
        next(source.batches(64))


def test_grads_fp16_stores_half_precision_gradients_read_back_as_float32(tmp_path):
    gen = torch.Generator().manual_seed(0)
    a, g = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen) * 1e-2
    w = StoreWriter(tmp_path / "s", {}, grads_fp16=True)
    w.write_shard(a, g, 1)
    w.finish()
    m = _manifest(tmp_path / "s")
    assert m["grads_dtype"] == "float16" and m["dtype"] == "float32"
    (b,) = StoreSource(tmp_path / "s").iter_all()
    assert b.grads.dtype == torch.float32 and torch.equal(b.grads, g.half().float()) and torch.equal(b.acts, a)
    # 2 bytes per gradient instead of 4: the shard is 6 x 8 x 2 bytes smaller than a float32 one
    w32 = StoreWriter(tmp_path / "s32", {})
    w32.write_shard(a, g, 1)
    sizes = [next((tmp_path / name).glob("shard-*.safetensors")).stat().st_size for name in ("s32", "s")]
    assert sizes[0] - sizes[1] == 6 * 8 * 2


def test_grads_fp16_refuses_overflow_and_a_store_without_gradients(tmp_path, cfg, tiny_model, tokenizer):
    w = StoreWriter(tmp_path / "s", {}, grads_fp16=True)
    with pytest.raises(SaekitError, match="gradients exceed the float16 range"):
        w.write_shard(torch.zeros(2, 4), torch.full((2, 4), 1e6), 1)
    with pytest.raises(SaekitError, match="add --with-grads"):
        cache(replace(cfg, grads_fp16=True, lm=replace(cfg.lm, with_grads=False)), tiny_model, tokenizer)


def test_reopening_a_store_with_another_gradient_dtype_is_refused(tmp_path):
    w = StoreWriter(tmp_path / "s", {"k": 1})
    w.write_shard(torch.zeros(2, 4), torch.zeros(2, 4), 1)
    with pytest.raises(SaekitError, match="other settings"):
        StoreWriter(tmp_path / "s", {"k": 1}, grads_fp16=True)
