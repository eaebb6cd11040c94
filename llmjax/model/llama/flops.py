"""Parameters and training FLOPs per token of a Llama config.

FLOPs per token = 6 x non-embedding params (forward and backward of every matmul weight)
+ 6 x d_model x vocab (the output projection, counted even when tied to the embedding)
+ 12 x layers x d_model x seq / 2 (attention scores and weighted values; causal halves it).
Embedding lookups, norms, RoPE and elementwise ops are not counted.
"""

from __future__ import annotations


def non_embedding_params(m) -> int:
    attention = m.d_model * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    mlp = 3 * m.d_model * m.mlp_dim  # SwiGLU: gate, up and down.
    return m.num_layers * (attention + mlp + 2 * m.d_model) + m.d_model


def param_count(m) -> int:
    return non_embedding_params(m) + m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)


def flops_per_token(m, seq_len: int) -> float:
    return (6 * non_embedding_params(m) + 6 * m.d_model * m.vocab_size
            + 12 * m.num_layers * m.d_model * seq_len / 2)
