"""The shapes of Qwen3Guard-Gen's three sizes, from the Qwen3 base configs (Qwen/Qwen3-0.6B,
-4B, -8B `config.json`) that Qwen3Guard-Gen keeps: what the random-weight benchmark models are
built with (`bench/random_qwen3.py`) and what the capacity planner's GPU memory arithmetic
reads (weights and KV cache bytes). No model is loaded here."""

from __future__ import annotations

from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "0.6B": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
    },
    "4B": {
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
    },
    "8B": {
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    },
}
COMMON: dict[str, Any] = {
    "vocab_size": 151936,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "use_sliding_window": False,
}
# The context Qwen3Guard-Gen is trained for (its model card: 32,768 tokens).
CONTEXT_TOKENS = 32_768
DTYPE_BYTES = 2  # bf16 weights and KV cache


def parameters(size: str) -> int:
    """Parameter count of a size: embeddings (and an untied output head), attention, MLP and
    norms of every layer."""
    shape = {**COMMON, **SHAPES[size]}
    hidden, head_dim = shape["hidden_size"], shape["head_dim"]
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    embeddings = shape["vocab_size"] * hidden * (1 if shape["tie_word_embeddings"] else 2)
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * shape["intermediate_size"]
    norms = 2 * hidden + 2 * head_dim  # input and post-attention; q and k norms
    return int(embeddings + shape["num_hidden_layers"] * (attention + mlp + norms) + hidden)


def weight_bytes(size: str) -> int:
    return parameters(size) * DTYPE_BYTES


def kv_bytes_per_token(size: str) -> int:
    """Key and value of every layer for one token."""
    shape = {**COMMON, **SHAPES[size]}
    layers, kv_heads = int(shape["num_hidden_layers"]), int(shape["num_key_value_heads"])
    return 2 * layers * kv_heads * int(shape["head_dim"]) * DTYPE_BYTES
