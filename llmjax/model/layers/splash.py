"""TPU splash attention (Pallas): causal, document-masked, grouped-query, never materialising
the [length, length] scores. Used when `select_attention_impl` picks "splash"; with
`interpret=True` the same kernel runs (slowly) on any backend, which is how it is tested here.
"""

from __future__ import annotations

import importlib.util

import jax

KERNEL_MODULE = "jax.experimental.pallas.ops.tpu.splash_attention"


def splash_available() -> bool:
    """Whether this JAX ships the splash kernel (it needs Pallas' TPU backend)."""
    try:
        return importlib.util.find_spec(KERNEL_MODULE) is not None
    except ImportError:
        return False


def splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT=None, interpret: bool = False):
    """Causal attention of q [batch, length, heads, head_dim] over k, v [batch, length,
    kv_heads, head_dim]; tokens attend only within their segment when ids are given."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # noqa: PLC0415

    _, t, n, h = q_BTNH.shape
    block = min(512, t)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.CausalMask((t, t)) for _ in range(n)])
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)
    # The kernel takes heads first and does not scale the scores.
    q_BNTH = (q_BTNH * h**-0.5).transpose(0, 2, 1, 3)
    k_BKTH, v_BKTH = k_BTKH.transpose(0, 2, 1, 3), v_BTKH.transpose(0, 2, 1, 3)
    if segment_ids_BT is None:
        out_BNTH = jax.vmap(kernel)(q_BNTH, k_BKTH, v_BKTH)
    else:
        segments = splash.SegmentIds(q=segment_ids_BT, kv=segment_ids_BT)
        out_BNTH = jax.vmap(kernel)(q_BNTH, k_BKTH, v_BKTH, segment_ids=segments)
    return out_BNTH.transpose(0, 2, 1, 3)
