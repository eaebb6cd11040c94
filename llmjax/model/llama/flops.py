"""Parameters and training FLOPs per token of a Llama config, dense or mixture-of-experts.

FLOPs per token = 6 x active non-embedding params (forward and backward of every matmul
weight a token goes through) + 6 x d_model x vocab (the output projection, counted even when
tied to the embedding) + 12 x layers x heads x head_dim x seq / 2 (attention scores and
weighted values; causal halves it). Embedding lookups, norms, RoPE and elementwise ops are not counted.

An MoE layer holds router + num_experts experts (+ shared experts), but a token passes through
the router, experts_per_token experts and the shared ones only: those are its active
parameters, and MFU is reported against them. Dispatch work (sorting, gathers, a capacity
run's padding) is not counted: it is the overhead MFU exposes.
"""

from __future__ import annotations


def _expert_mlp(m) -> int:
    return 3 * m.d_model * (m.expert_mlp_dim or m.mlp_dim)  # One SwiGLU expert: gate, up, down.


def _layers(m, experts_used: int) -> int:
    """Non-embedding params of all layers when each MoE layer counts `experts_used` experts."""
    attention = m.d_model * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    dense_mlp = 3 * m.d_model * m.mlp_dim  # SwiGLU: gate, up and down.
    moe_layers = m.num_layers // m.moe_every if m.num_experts else 0
    moe_mlp = m.d_model * m.num_experts + (experts_used + m.shared_experts) * _expert_mlp(m)
    return (m.num_layers * (attention + 2 * m.d_model) + (m.num_layers - moe_layers) * dense_mlp
            + moe_layers * moe_mlp)


def non_embedding_params(m) -> int:
    return _layers(m, m.num_experts) + m.d_model


def active_non_embedding_params(m) -> int:
    """What one token computes with: equal to non_embedding_params for a dense model."""
    return _layers(m, m.experts_per_token) + m.d_model


def param_count(m) -> int:
    return non_embedding_params(m) + m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)


def flops_per_token(m, seq_len: int) -> float:
    return (6 * active_non_embedding_params(m) + 6 * m.d_model * m.vocab_size
            + 12 * m.num_layers * m.num_heads * m.head_dim * seq_len / 2)
