"""A tiny random Llama-style model and a word-level tokenizer, built locally (no hub) for tests."""

from __future__ import annotations

import torch


def word_tokenizer(words: list[str]):
    """Word-level tokenizer over ``words`` with <unk>, <bos>, <eos>, <pad> as ids 0-3."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<bos>", "<eos>", "<pad>", *words])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>", pad_token="<pad>")


def tiny_llama(tokenizer, hidden: int = 32, intermediate: int = 64, heads: int = 4, kv_heads: int = 2,
               max_positions: int = 128):
    """A 2-layer random Llama (seeded with 0) in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg).eval()
