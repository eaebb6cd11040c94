"""Parameters and training FLOPs per token of an LSTM config.

Per layer, the input product x @ W_ih [in, 4H], the recurrent product h @ W_hh [out, 4H] and,
with a projection, (o * tanh c) @ W_p [H, P]; `in` is d_model for the first layer and the
previous layer's output width `out` (P, or H without a projection) after it.
FLOPs per token = 6 x non-embedding params (every matmul weight, forward and backward; the gate
biases and the gates' elementwise work are a rounding error: ~30 FLOPs per hidden unit against
2 x (in + out) x 4 per weight column) + 6 x out x vocab (the output layer). Unlike attention,
nothing grows with the sequence length: `seq_len` is accepted for the common signature.
"""

from __future__ import annotations


def _layer_params(m, layer: int) -> int:
    hidden, out = m.hidden_dim, m.proj_dim or m.hidden_dim
    inputs = m.d_model if layer == 0 else out
    projection = hidden * out if m.proj_dim else 0
    return inputs * 4 * hidden + out * 4 * hidden + 4 * hidden + projection


def non_embedding_params(m) -> int:
    return sum(_layer_params(m, layer) for layer in range(m.num_layers))


def param_count(m) -> int:
    out = m.proj_dim or m.hidden_dim
    output = m.vocab_size * (1 if m.tie_embeddings else 1 + out)  # Its bias, and its own matrix if untied.
    return non_embedding_params(m) + m.vocab_size * m.d_model + output


def flops_per_token(m, seq_len: int) -> float:
    del seq_len  # The recurrence's cost per token does not depend on it.
    return 6 * non_embedding_params(m) + 6 * (m.proj_dim or m.hidden_dim) * m.vocab_size
