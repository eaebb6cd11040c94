"""TPU splash attention (Pallas): causal or bidirectional, document-masked, grouped-query, never materialising
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


def splash_attention(q_BTNH, k_BSKH, v_BSKH, segment_ids_BT=None, interpret: bool = False,
                     causal: bool = True, kv_segment_ids_BS=None):
    """Attention of q [batch, length, heads, head_dim] over k, v [batch, keys, kv_heads,
    head_dim], causal or (`causal=False`) bidirectional; tokens attend only within their
    segment when ids are given (the keys' own ids in `kv_segment_ids_BS` for cross-attention)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # noqa: PLC0415

    _, t, n, h = q_BTNH.shape
    keys = k_BSKH.shape[1]
    block = min(512, t, keys)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
    head_mask = splash.CausalMask((t, keys)) if causal else splash.FullMask((t, keys))
    mask = splash.MultiHeadMask([head_mask for _ in range(n)])
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)
    # The kernel takes heads first and does not scale the scores.
    q_BNTH = (q_BTNH * h**-0.5).transpose(0, 2, 1, 3)
    k_BKSH, v_BKSH = k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3)
    if segment_ids_BT is None:
        out_BNTH = jax.vmap(kernel)(q_BNTH, k_BKSH, v_BKSH)
    else:
        kv_ids = segment_ids_BT if kv_segment_ids_BS is None else kv_segment_ids_BS
        segments = splash.SegmentIds(q=segment_ids_BT, kv=kv_ids)
        out_BNTH = jax.vmap(kernel)(q_BNTH, k_BKSH, v_BKSH, segment_ids=segments)
    return out_BNTH.transpose(0, 2, 1, 3)
