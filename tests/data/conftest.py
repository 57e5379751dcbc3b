"""Shared fixtures: a tiny random Llama-style model and a word-level tokenizer built locally (no hub)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_lm import tiny_llama, word_tokenizer

WORDS = ("the king queen lord lady speaks sleeps dreams of and to a in my thy night day sword crown "
         "love death fool ghost castle storm sea moon sun").split()


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    """Every test in this folder runs on one torch thread (tests/conftest.py's ``one_thread``)."""


def make_text(n_lines: int = 200, seed: int = 0) -> str:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(WORDS), (n_lines, 9), generator=gen)
    return "\n".join(" ".join(WORDS[i] for i in row) for row in idx.tolist())


@pytest.fixture(scope="session")
def tokenizer():
    return word_tokenizer(WORDS)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    model = tiny_llama(tokenizer)
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_model, tokenizer) -> Path:
    """The tiny model and tokenizer saved as a local Hugging Face folder."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A small corpus folder: two .txt files and a .jsonl file."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text(make_text(30, seed=1))
    (d / "b.txt").write_text(make_text(30, seed=2))
    import json

    (d / "c.jsonl").write_text("\n".join(json.dumps({"text": make_text(3, seed=10 + i)}) for i in range(10)))
    return d
