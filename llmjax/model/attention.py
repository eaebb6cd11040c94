"""Causal grouped-query self-attention with RoPE and document (segment) masking."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.model.blockwise import blockwise_causal_attention
from llmjax.model.kv_cache import attend_to_cache
from llmjax.model.layers import Projection, residual_scale
from llmjax.model.rope import apply_rope
from llmjax.model.spec import ModelSpec
from llmjax.model.splash import splash_attention, splash_available

HEADS_ACT = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
KV_ACT = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")


def select_attention_impl(requested: str, platform: str, dtype, head_dim: int, length: int,
                          splash: bool | None = None) -> str:
    """`auto` takes the platform's fused kernel where it applies: cuDNN flash attention on GPU
    for 16-bit inputs with head_dim a multiple of 8 up to 128 (what cuDNN supports); TPU splash
    attention where this JAX ships it (`splash`, by default looked up) and the length fills
    its 128-wide blocks; on CPU causal query blocks with a hand-written backward pass
    (`llmjax.model.blockwise`); XLA's reference path everywhere else. An explicit choice is
    honoured as given."""
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


class Attention(nn.Module):
    spec: ModelSpec

    @nn.compact
    def __call__(self, x_BTD, rope, segment_ids_BT):
        """`rope`: the (sin, cos) tables of `rope_tables` for the tokens' positions."""
        s = self.spec
        d, n, k, h = s.d_model, s.num_heads, s.num_kv_heads, s.head_dim
        q_BTNH = Projection(s, (d, n, h), ("embed", "heads", "head_dim"), name="query")(x_BTD)
        k_BTKH = Projection(s, (d, k, h), ("embed", "kv_heads", "head_dim"), name="key")(x_BTD)
        v_BTKH = Projection(s, (d, k, h), ("embed", "kv_heads", "head_dim"), name="value")(x_BTD)
        q_BTNH = nn.with_logical_constraint(apply_rope(q_BTNH, rope), HEADS_ACT)
        k_BTKH = nn.with_logical_constraint(apply_rope(k_BTKH, rope), KV_ACT)
        v_BTKH = nn.with_logical_constraint(v_BTKH, KV_ACT)

        if self.is_mutable_collection("cache") and not self.is_initializing():  # Decoding.
            k_BTKH, v_BTKH, mask_B1TT = attend_to_cache(self, k_BTKH, v_BTKH, segment_ids_BT)
            # One new query over the cache is memory-bound: XLA's path is as fast as any kernel.
            out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, mask=mask_B1TT,
                                                    implementation="xla")
        else:
            impl = select_attention_impl(s.attention_impl, jax.default_backend(), s.compute_dtype, h,
                                         x_BTD.shape[1])
            if impl == "splash":
                out_BTNH = splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)
            elif impl == "blockwise":
                # 128-query blocks, at most 8 of them: the backward pass's ops grow as blocks^2.
                block = max(128, -(-x_BTD.shape[1] // 8))
                out_BTNH = blockwise_causal_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, block)
            else:
                mask_B1TT = None
                if segment_ids_BT is not None:
                    mask_B1TT = (segment_ids_BT[:, None, :, None] == segment_ids_BT[:, None, None, :])
                out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, mask=mask_B1TT,
                                                        is_causal=True, implementation=impl)
        out_BTNH = nn.with_logical_constraint(out_BTNH, HEADS_ACT)
        return Projection(s, (n, h, d), ("heads", "head_dim", "embed"), in_ndim=2,
                          scale=residual_scale(s), name="out")(out_BTNH)
