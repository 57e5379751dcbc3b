from __future__ import annotations

import json

import pytest
import torch

from saekit.config import LMConfig
from saekit.data.harvest import harvest
from saekit.data.hookpoints import find_blocks
from saekit.data.lm_source import LMSource
from saekit.data.text import contexts
from saekit.errors import SaekitError


@pytest.fixture
def lm_cfg(model_dir, corpus_dir) -> LMConfig:
    return LMConfig(model=str(model_dir), hookpoint="resid_post.1", corpus=str(corpus_dir), context_length=16,
                    eval_fraction=0.2, model_batch_contexts=16, shuffle_buffer_tokens=400, seed=5)


def _multiset(x):
    return torch.unique(x, dim=0, return_counts=True)


def test_one_epoch_is_a_shuffle_of_the_split(lm_cfg, tiny_model, tokenizer):
    src = LMSource(lm_cfg, model=tiny_model, tokenizer=tokenizer)
    assert src.d_in == 32 and not src.has_grads
    ref = torch.cat([h.acts for h in harvest(tiny_model, src.hookpoint,
                                             contexts(tokenizer, lm_cfg.corpus, "text", 16, "train", 0.2),
                                             progress=False)])
    epoch, pos = next(src.batches(ref.shape[0]))
    assert not torch.equal(epoch.acts, ref)
    for a, b in zip(_multiset(epoch.acts), _multiset(ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # batch composition may change the last bits
    assert pos["epoch"] == 1 or pos == {"epoch": 0, "block": pos["block"], "row": 0}
    torch.testing.assert_close(src.sample(50), ref[:50], rtol=0, atol=1e-5)


def test_resume_gives_the_same_batches_without_replaying_the_model(lm_cfg, tiny_model, tokenizer):
    src = LMSource(lm_cfg, model=tiny_model, tokenizer=tokenizer)
    stream = src.batches(64)
    run = [next(stream) for _ in range(20)]  # > 1 epoch (~650 train tokens)
    assert run[-1][1]["epoch"] >= 1
    calls = []
    h = find_blocks(tiny_model)[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        resumed = LMSource(lm_cfg, model=tiny_model, tokenizer=tokenizer).batches(64, json.loads(json.dumps(run[9][1])))
        for expected, pos in run[10:]:
            b, p = next(resumed)
            assert torch.equal(b.acts, expected.acts) and p == pos
    finally:
        h.remove()
    assert len(calls) < 12  # the probe plus a few blocks, not the whole history


def test_grads_and_eval_split(lm_cfg, tiny_model, tokenizer):
    lm_cfg.with_grads = True
    src = LMSource(lm_cfg, split="eval", model=tiny_model, tokenizer=tokenizer)
    b, _ = next(src.batches(32))
    assert src.has_grads and b.grads.shape == b.acts.shape == (32, 32)


def test_nan_activations_refused(lm_cfg, tiny_model, tokenizer):
    src = LMSource(lm_cfg, model=tiny_model, tokenizer=tokenizer)
    h = src.hookpoint.module.register_forward_hook(lambda m, i, o: o * float("nan"))
    try:
        with pytest.raises(SaekitError, match="NaN"):
            next(src.batches(8))
    finally:
        h.remove()


def test_empty_split(lm_cfg, tiny_model, tokenizer, tmp_path):
    (tmp_path / "tiny.txt").write_text("the king")
    lm_cfg.corpus = str(tmp_path / "tiny.txt")
    src = LMSource(lm_cfg, split="eval", model=tiny_model, tokenizer=tokenizer)
    with pytest.raises(SaekitError, match="no activations"):
        next(src.batches(8))


def test_iter_all_reads_the_split_once_in_order(lm_cfg, tiny_model, tokenizer):
    """What `saekit eval` reads from an LM source: every included token of the split, once."""
    lm_cfg.shuffle_buffer_tokens = 64  # blocks of 4 contexts
    src = LMSource(lm_cfg, split="eval", model=tiny_model, tokenizer=tokenizer)
    ref = torch.cat([h.acts for h in harvest(tiny_model, src.hookpoint,
                                             contexts(tokenizer, lm_cfg.corpus, "text", 16, "eval", 0.2),
                                             progress=False)])
    blocks = list(src.iter_all())
    assert len(blocks) > 1  # several shuffle blocks, read in order
    torch.testing.assert_close(torch.cat([b.acts for b in blocks]), ref, rtol=0, atol=1e-5)
    assert sum(b.acts.shape[0] for b in src.iter_all(max_tokens=1)) == blocks[0].acts.shape[0]
