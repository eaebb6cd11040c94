"""The key/value cache of one attention layer, for decoding one token at a time (llmjax.sample).

It lives in Flax's "cache" collection, so training, which never passes that collection, takes
none of this path. Each layer keeps its rotated keys, values and the segment id of every slot;
new entries are written at `index`, and a query sees the filled slots at or before its own
whose segment id equals its own (a prompt's left padding has its own segment, 0).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax import cpu_runtime


def attend_to_cache(module: nn.Module, k_BTKH, v_BTKH, segment_ids_BT, prefix_BT=None):
    """Appends this call's keys and values; returns all cached keys and values [B, K, S, H]
    (the cache's own layout, see `cache_attention`) and the mask [B, 1, T, S] of which slots
    each new query may attend to. New tokens marked in `prefix_BT` (a prefix LM's prompt) are
    seen by every new query of their segment, ahead of it or not, as in training."""
    k_BKTH, v_BKTH = k_BTKH.swapaxes(1, 2), v_BTKH.swapaxes(1, 2)
    key = module.variable("cache", "cached_key", jnp.zeros, k_BKTH.shape, k_BTKH.dtype)
    value = module.variable("cache", "cached_value", jnp.zeros, v_BKTH.shape, v_BTKH.dtype)
    segments = module.variable("cache", "cached_segment_ids", jnp.zeros, segment_ids_BT.shape, jnp.int32)
    index = module.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    start, length = index.value, k_BTKH.shape[1]

    def append(cache, new, slot_axis):
        at = tuple(start if axis == slot_axis else 0 for axis in range(cache.ndim))
        return jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), at)

    key.value = append(key.value, k_BKTH, 2)
    value.value = append(value.value, v_BKTH, 2)
    segments.value = append(segments.value, segment_ids_BT, 1)
    index.value = start + length
    slot_S = jnp.arange(key.value.shape[2])
    query_T = start + jnp.arange(length)
    seen_BTS = (slot_S[None, :] <= query_T[:, None])[None]
    if prefix_BT is not None:
        prefix_BS = append(jnp.zeros(segments.value.shape, bool), prefix_BT.astype(bool), 1)
        seen_BTS = seen_BTS | prefix_BS[:, None, :]
    same_BTS = segments.value[:, None, :] == segment_ids_BT[:, :, None]
    return key.value, value.value, (seen_BTS & same_BTS)[:, None]


def cache_attention(q_BTNH, k_BKSH, v_BKSH, mask_B1TS, bias_1NTS=None, scale: float | None = None):
    """Attention output [B, T, N, H] of new queries over the cache, N query heads in groups
    over K key/value heads, the math of `jax.nn.dot_product_attention`'s XLA path (fp32
    scores and softmax, probabilities in the values' dtype). It reads keys and values laid out
    [B, K, S, H], as XLA:CPU's batched products take them: from the [B, S, K, H] layout that
    training's kernels take, XLA copied the whole cache into a transposed buffer at every
    token, 4.4x the time of the attention itself at batch 16 (bench36m shape). The values'
    product's result dtype is `cpu_runtime.values_product_dtype`'s."""
    b, t, n, h = q_BTNH.shape
    kv = k_BKSH.shape[1]
    q_BKGTH = q_BTNH.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4)
    scores_BKGTS = jnp.einsum("bkgth,bksh->bkgts", q_BKGTH, k_BKSH, preferred_element_type=jnp.float32)
    scores_BKGTS *= h ** -0.5 if scale is None else scale
    if bias_1NTS is not None:
        scores_BKGTS += bias_1NTS.reshape(1, kv, n // kv, t, -1)
    scores_BKGTS = jnp.where(mask_B1TS[:, :, None], scores_BKGTS, -0.7 * jnp.finfo(jnp.float32).max)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BKSH.dtype)
    out_BKGTH = jnp.einsum("bkgts,bksh->bkgth", probs_BKGTS, v_BKSH,
                           preferred_element_type=cpu_runtime.values_product_dtype())
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(v_BKSH.dtype)
