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


def attend_to_cache(module: nn.Module, k_BTKH, v_BTKH, segment_ids_BT):
    """Appends this call's keys and values; returns all cached keys and values [B, S, K, H]
    and the mask [B, 1, T, S] of which slots each new query may attend to."""
    key = module.variable("cache", "cached_key", jnp.zeros, k_BTKH.shape, k_BTKH.dtype)
    value = module.variable("cache", "cached_value", jnp.zeros, v_BTKH.shape, v_BTKH.dtype)
    segments = module.variable("cache", "cached_segment_ids", jnp.zeros, segment_ids_BT.shape, jnp.int32)
    index = module.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    start, length = index.value, k_BTKH.shape[1]

    def append(cache, new):
        return jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype),
                                            (0, start) + (0,) * (cache.ndim - 2))

    key.value = append(key.value, k_BTKH)
    value.value = append(value.value, v_BTKH)
    segments.value = append(segments.value, segment_ids_BT)
    index.value = start + length
    slot_S = jnp.arange(key.value.shape[1])
    query_T = start + jnp.arange(length)
    causal_TS = slot_S[None, :] <= query_T[:, None]
    same_BTS = segments.value[:, None, :] == segment_ids_BT[:, :, None]
    return key.value, value.value, (causal_TS[None] & same_BTS)[:, None]
