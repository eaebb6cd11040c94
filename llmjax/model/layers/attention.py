"""Causal, document-masked, grouped-query attention over already projected queries, keys and
values: the kernel choice per platform, and the KV-cache path used when decoding. Families
build their own projections (biases, RoPE or not) and call `causal_attention`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.model.layers.blockwise import blockwise_causal_attention
from llmjax.model.layers.kv_cache import attend_to_cache
from llmjax.model.layers.splash import splash_attention, splash_available

HEADS_ACT = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
KV_ACT = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")


def select_attention_impl(requested: str, platform: str, dtype, head_dim: int, length: int,
                          splash: bool | None = None) -> str:
    """`auto` takes the platform's fused kernel where it applies: cuDNN flash attention on GPU
    for 16-bit inputs with head_dim a multiple of 8 up to 128 (what cuDNN supports); TPU splash
    attention where this JAX ships it (`splash`, by default looked up) and the length fills
    its 128-wide blocks; on CPU causal query blocks with a hand-written backward pass
    (`llmjax.model.layers.blockwise`); XLA's reference path everywhere else. An explicit
    choice is honoured as given."""
    if requested != "auto":
        return requested
    if (platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
            and head_dim % 8 == 0 and head_dim <= 128):
        return "cudnn"
    if platform == "tpu" and length % 128 == 0 and (splash_available() if splash is None else splash):
        return "splash"
    if platform == "cpu":
        return "blockwise"
    return "xla"


def causal_attention(module: nn.Module, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, impl: str):
    """Attention output [B, T, N, H]. `module` is the calling Flax module: when its "cache"
    collection is mutable (decoding), the keys and values are appended to its cache and the
    queries attend to everything cached so far instead."""
    q_BTNH = nn.with_logical_constraint(q_BTNH, HEADS_ACT)
    k_BTKH = nn.with_logical_constraint(k_BTKH, KV_ACT)
    v_BTKH = nn.with_logical_constraint(v_BTKH, KV_ACT)
    if module.is_mutable_collection("cache") and not module.is_initializing():  # Decoding.
        k_BTKH, v_BTKH, mask_B1TT = attend_to_cache(module, k_BTKH, v_BTKH, segment_ids_BT)
        # One new query over the cache is memory-bound: XLA's path is as fast as any kernel.
        out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, mask=mask_B1TT,
                                                implementation="xla")
    else:
        impl = select_attention_impl(impl, jax.default_backend(), q_BTNH.dtype, q_BTNH.shape[-1],
                                     q_BTNH.shape[1])
        if impl == "splash":
            out_BTNH = splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)
        elif impl == "blockwise":
            # 128-query blocks, at most 8 of them: the backward pass's ops grow as blocks^2.
            block = max(128, -(-q_BTNH.shape[1] // 8))
            out_BTNH = blockwise_causal_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, block)
        else:
            mask_B1TT = None
            if segment_ids_BT is not None:
                mask_B1TT = (segment_ids_BT[:, None, :, None] == segment_ids_BT[:, None, None, :])
            out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, mask=mask_B1TT,
                                                    is_causal=True, implementation=impl)
    return nn.with_logical_constraint(out_BTNH, HEADS_ACT)
