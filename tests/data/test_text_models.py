from __future__ import annotations

import json
import os

import pytest
import torch

from saekit.data.models import load_model
from saekit.data.text import contexts, documents, kjv_paragraphs, pack, shakespeare_files
from saekit.errors import SaekitError


def test_load_model_from_local_folder(model_dir, tiny_model):
    model, tok = load_model(str(model_dir))
    assert tok.bos_token == "<bos>"
    ids = torch.tensor([[1, 5, 6, 7]])
    torch.testing.assert_close(model(input_ids=ids).logits, tiny_model(input_ids=ids).logits)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("spec", ["/nonexistent/model", "./missing.gguf", "not/a/valid/id"])
def test_unknown_model_is_one_line_error(spec):
    with pytest.raises(SaekitError) as e:
        load_model(spec)
    assert "\n" not in str(e.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(SaekitError, match="config.json"):
        load_model(str(tmp_path))


def test_packing_bos_mask_and_lengths(tokenizer, corpus_dir):
    ctxs = list(contexts(tokenizer, str(corpus_dir), "text", 16, "all", 0.0))
    assert len(ctxs) > 10
    for c in ctxs:
        assert c.input_ids.shape == (16,) and c.input_ids[0] == tokenizer.bos_token_id
        assert not c.mask[0]
        specials = torch.isin(c.input_ids, torch.tensor(tokenizer.all_special_ids))
        assert torch.equal(c.mask, c.attention_mask.bool() & ~specials)
    assert ctxs[-1].attention_mask.sum() <= 16
    # every word of the corpus appears exactly once in the packed stream
    n_words = sum(len(d.split()) for d in documents(str(corpus_dir)))
    assert sum(int(c.mask.sum()) for c in ctxs) == n_words


def test_eval_split_is_deterministic_and_disjoint(tokenizer, corpus_dir):
    get = lambda split: [c.index for c in contexts(tokenizer, str(corpus_dir), "text", 16, split, 0.2)]  # noqa: E731
    train, ev = get("train"), get("eval")
    assert train == get("train") and ev == get("eval")
    assert not set(train) & set(ev) and sorted(train + ev) == list(range(len(train) + len(ev)))
    assert 0 < len(ev) < len(train)


def test_jsonl_column_and_parquet(tokenizer, tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"body": "the king sleeps"}) + "\n")
    assert list(documents(str(tmp_path / "x.jsonl"), "body")) == ["the king sleeps"]
    with pytest.raises(SaekitError, match="column"):
        list(documents(str(tmp_path / "x.jsonl"), "text"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b", "c"]}), tmp_path / "y.parquet")
    assert list(documents(str(tmp_path / "y.parquet"))) == ["a b", "c"]


def test_empty_or_unreadable_corpus(tokenizer, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SaekitError, match="empty"):
        list(contexts(tokenizer, str(tmp_path / "empty.txt"), "text", 16, "all", 0.0))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(SaekitError, match="cannot read"):
        list(documents(str(tmp_path / "bad.txt")))
    with pytest.raises(SaekitError, match="not found"):
        list(documents(str(tmp_path / "nope.txt")))
    (tmp_path / "sub").mkdir()
    with pytest.raises(SaekitError, match="no .*files"):
        list(documents(str(tmp_path / "sub")))


def test_shakespeare_is_packaged():
    files = shakespeare_files()
    assert len(files) > 30 and all(f.suffix == ".md" for f in files)


def test_kjv_is_packaged_as_paragraphs():
    paragraphs = kjv_paragraphs()
    assert paragraphs[0].startswith("In the beginning God created the heaven and the earth.")
    assert paragraphs[-1].endswith("The grace of our Lord Jesus Christ [be] with you all. Amen.")
    assert len(paragraphs) > 4000 and not any('"""' in p or "\n" in p for p in paragraphs)


def test_bundled_corpora_join_in_order():
    first_kjv = kjv_paragraphs()[0]
    joined = documents("shakespeare+kjv")
    n_plays = len(shakespeare_files())
    docs = [next(joined) for _ in range(n_plays + 1)]
    assert docs[:n_plays] == list(documents("shakespeare"))
    assert docs[n_plays] == first_kjv
    assert next(documents("kjv+shakespeare")) == first_kjv


@pytest.mark.parametrize("corpus", ["shakespeare+nonsense", "kjv+my_data.txt"])
def test_joined_corpus_names_must_be_bundled(corpus):
    with pytest.raises(SaekitError, match="only bundled corpora"):
        next(documents(corpus))


def test_pack_without_bos(tokenizer):
    class NoBos:
        bos_token_id = None
        eos_token_id = tokenizer.eos_token_id
        pad_token_id = tokenizer.pad_token_id
        all_special_ids = tokenizer.all_special_ids

        def __call__(self, *a, **k):
            return tokenizer(*a, **k)

    ctxs = list(pack(NoBos(), ["the king " * 20], 8))
    assert ctxs[0].mask.all() and ctxs[0].input_ids[0] != tokenizer.bos_token_id


def test_a_killed_conversions_half_written_folder_is_removed_a_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from saekit.data.models import remove_stale_conversions

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)  # that process has exited
    folder = tmp_path / "models" / "smollm2-abc"
    folder.parent.mkdir(parents=True)
    stale = folder.parent / f".{folder.name}.{dead_pid}.x1y2.tmp"
    live = folder.parent / f".{folder.name}.{os.getpid()}.z3.tmp"
    other = folder.parent / f".other-model.{dead_pid}.q.tmp"
    for d in (stale, live, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    assert remove_stale_conversions(folder) == [stale]
    assert not stale.exists() and live.is_dir() and other.is_dir()
