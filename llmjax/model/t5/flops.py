"""Parameters and training FLOPs per token of a T5 config.

A "token" here is one encoder input token (data.seq_len per row); the decoder runs over
`decoder_len` target tokens per row, by default the targets span corruption gives an encoder
of `seq_len` at T5's rates (llmjax/train/objectives/span_lengths.py: 114 for 512).

FLOPs per encoder token = 6 x encoder params + 12 x layers x inner x seq_len (bidirectional
attention scores and weighted values, inner = heads x head_dim)
+ (decoder_len / seq_len) x [6 x decoder params + 6 x d_model x vocab (the output projection)
+ 12 x layers x inner x decoder_len / 2 (causal self-attention) + 12 x layers x inner x seq_len
(cross-attention over every encoder token)]. The embedding and bias-table lookups are not
counted.
"""

from __future__ import annotations

from llmjax.train.objectives.span_lengths import span_lengths


def _layers(m) -> tuple[int, int]:
    """(encoder params, decoder params) without embeddings and bias tables."""
    inner = m.num_heads * m.head_dim
    attention = 4 * m.d_model * inner
    mlp = (2 if m.feed_forward == "relu" else 3) * m.d_model * m.mlp_dim
    encoder = m.num_layers * (attention + mlp + 2 * m.d_model) + m.d_model
    decoder = m.num_layers * (2 * attention + mlp + 3 * m.d_model) + m.d_model
    return encoder, decoder


def non_embedding_params(m) -> int:
    return sum(_layers(m)) + 2 * m.relative_buckets * m.num_heads


def param_count(m) -> int:
    return non_embedding_params(m) + m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)


def flops_per_token(m, seq_len: int, decoder_len: int | None = None) -> float:
    decoder_len = decoder_len or span_lengths(seq_len)[1]
    inner = m.num_heads * m.head_dim
    encoder, decoder = _layers(m)
    per_decoder_token = (6 * decoder + 6 * m.d_model * m.vocab_size
                         + 12 * m.num_layers * inner * (decoder_len / 2 + seq_len))
    return 6 * encoder + 12 * m.num_layers * inner * seq_len + per_decoder_token * decoder_len / seq_len
