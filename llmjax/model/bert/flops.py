"""Parameters and training FLOPs per token of a BERT config.

FLOPs per token = 6 x non-embedding params (every matmul weight, forward and backward, the MLM
head's transform included; biases and LayerNorms are a rounding error)
+ 6 x d_model x vocab (the output projection, tied to the token embedding, over every position:
the head is applied to the whole sequence, though only the masked positions are scored)
+ 12 x layers x d_model x seq (attention scores and weighted values; bidirectional, so nothing
is halved). Token, position and token-type embeddings are lookups and are not counted.
"""

from __future__ import annotations


def non_embedding_params(m) -> int:
    inner = m.num_heads * m.head_dim
    attention = 3 * (m.d_model * inner + inner) + inner * m.d_model + m.d_model  # q, k, v, out.
    mlp = 2 * m.d_model * m.mlp_dim + m.mlp_dim + m.d_model
    norms = 2 * 2 * m.d_model  # After attention and after the MLP: scale and bias.
    head = m.d_model * m.d_model + m.d_model + 2 * m.d_model  # Transform dense and its LayerNorm.
    return m.num_layers * (attention + mlp + norms) + head


def param_count(m) -> int:
    embeddings = (m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
                  + (m.max_seq_len + m.type_vocab_size) * m.d_model
                  + 2 * m.d_model  # The embeddings' LayerNorm.
                  + m.vocab_size)  # The output bias.
    return non_embedding_params(m) + embeddings


def flops_per_token(m, seq_len: int) -> float:
    return (6 * non_embedding_params(m) + 6 * m.d_model * m.vocab_size
            + 12 * m.num_layers * m.d_model * seq_len)
