"""Parameters and training FLOPs per token of a GPT-2 config.

FLOPs per token = 6 x non-embedding params (every matmul weight, forward and backward; the
biases and LayerNorms they include are a rounding error)
+ 6 x d_model x vocab (the output projection, tied to the token embedding)
+ 12 x layers x d_model x seq / 2 (attention scores and weighted values; causal halves it).
The token and position embeddings are lookups and are not counted.
"""

from __future__ import annotations


def non_embedding_params(m) -> int:
    inner = m.num_heads * m.head_dim
    attention = 3 * m.d_model * inner + 3 * inner + inner * m.d_model + m.d_model  # c_attn, c_proj.
    mlp = 2 * m.d_model * m.mlp_dim + m.mlp_dim + m.d_model  # c_fc, c_proj.
    norms = 2 * 2 * m.d_model  # ln_1, ln_2: scale and bias.
    return m.num_layers * (attention + mlp + norms) + 2 * m.d_model  # ln_f.


def param_count(m) -> int:
    embeddings = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2) + m.max_seq_len * m.d_model
    return non_embedding_params(m) + embeddings


def flops_per_token(m, seq_len: int) -> float:
    return (6 * non_embedding_params(m) + 6 * m.d_model * m.vocab_size
            + 12 * m.num_layers * m.d_model * seq_len / 2)
