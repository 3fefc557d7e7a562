"""A tiny random-weight Qwen3 (2 layers, 64 wide, grouped-query attention) for the rollout
engine's tests: initializer_range 0.2 makes the next-token distribution peaked enough that
top-k/top-p and greedy differ from uniform (and, with a small vocabulary, EOS likely enough
that some rows stop early)."""

from __future__ import annotations

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


def tiny_qwen3(
    seed: int = 0, tie: bool = True, vocab_size: int = 100, eos: int = 1, pad: int = 0
) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        initializer_range=0.2,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
    )
    return Qwen3ForCausalLM(config).eval()
