"""Named Llama shapes. The published ones are checked in the tests against their published
parameter counts."""

from __future__ import annotations


def _model(vocab, d_model, layers, heads, kv_heads, mlp, seq, tie, theta=10_000.0, eps=1e-5, **moe):
    return dict(vocab_size=vocab, d_model=d_model, num_layers=layers, num_heads=heads,
                num_kv_heads=kv_heads, head_dim=d_model // heads, mlp_dim=mlp, max_seq_len=seq,
                tie_embeddings=tie, rope_theta=theta, norm_eps=eps, **moe)


def _moe(dense: dict, experts: int, top_k: int, expert_mlp: int) -> dict:
    """A mixture-of-experts variant of a dense shape."""
    return dense | dict(num_experts=experts, experts_per_token=top_k, expert_mlp_dim=expert_mlp)


PRESETS = {
    # For tests and smoke runs: seconds on a CPU.
    "tiny": _model(512, 64, 2, 4, 2, 128, 64, True),
    # The default: ~5M parameters, minutes on a 2-core CPU.
    "5m": _model(8192, 256, 4, 4, 2, 768, 256, True),
    # The benchmark model (scripts/benchmark.py): 36M parameters, 8 heads of 64 without GQA.
    "bench36m": _model(8192, 512, 8, 8, 8, 1536, 512, False),
    # A small GPT-2-scale ladder with Llama blocks (8192-token vocabulary).
    "20m": _model(8192, 384, 8, 6, 2, 1536, 1024, True),
    "125m": _model(32000, 768, 12, 12, 12, 2560, 2048, True),
    "350m": _model(32000, 1024, 24, 16, 16, 2816, 2048, True),
    "1.3b": _model(32000, 2048, 24, 16, 8, 5632, 2048, False),
    # Touvron et al. 2023 (Llama 2): 6,738,415,616 parameters.
    "llama2_7b": _model(32000, 4096, 32, 32, 32, 11008, 4096, False, eps=1e-5),
    # Meta Llama 3 (2024): 8,030,261,248 parameters.
    "llama3_8b": _model(128256, 4096, 32, 32, 8, 14336, 8192, False, theta=500_000.0),
}
PRESETS |= {
    # Mixture-of-experts variants: top-2 of experts half the dense MLP's width, so the same
    # active parameters (and FLOPs per token) as their dense shape; 8 experts hold 4x its MLP.
    "tiny_moe": _moe(PRESETS["tiny"], 4, 2, 64),
    "5m_moe": _moe(PRESETS["5m"], 8, 2, 384),
    "bench36m_moe": _moe(PRESETS["bench36m"], 8, 2, 768),
    # Jiang et al. 2024 (Mixtral 8x7B): 46,702,792,704 parameters, 12,879,925,248 active.
    "mixtral_8x7b": _moe(_model(32000, 4096, 32, 32, 8, 14336, 32768, False, theta=1e6), 8, 2, 14336),
}
