"""The model as a decoder with a key/value cache: the family's own module and the training
parameters, applied with Flax's "cache" collection mutable (see
`llmjax/model/layers/kv_cache.py`). Any family whose math offers `decoder(config)` decodes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.errors import LlmjaxError
from llmjax.model import registry
from llmjax.parallel.rules import AXIS_RULES

# Axis of the batch in each cache leaf, counted from the end (a scanned stack adds a leading
# layer axis, so counting from the front would depend on config.model.scan_layers).
_BATCH_AXIS_FROM_END = {"cached_key": 4, "cached_value": 4, "cached_segment_ids": 2,
                        # A recurrent family's state in place of keys and values (LSTM).
                        "recurrent_h": 2, "recurrent_c": 2, "recurrent_segment": 1}


def inference_decoder(config):
    """(module class, spec): the spec is hashable, so jitted decoding takes both as static
    arguments. A family without a cached decoder is refused."""
    math = registry.of(config).math()
    if not hasattr(math, "decoder"):
        raise LlmjaxError(f"the {config.model.family} family has no cached decoder; it cannot "
                          f"generate text with llmjax-sample.")
    return math.decoder(config)


def forward(params, cache, tokens_BT, positions_BT, segment_ids_BT, *, decoder):
    """(fp32 logits [B, T, V], updated cache): the T tokens are appended to the cache."""
    module, spec = decoder
    with nn.logical_axis_rules(AXIS_RULES):
        logits, variables = module(spec).apply(
            {"params": params, "cache": cache}, tokens_BT, positions_BT, segment_ids_BT,
            mutable=["cache"])
    return logits, variables["cache"]


def init_cache(params, decoder, batch: int, length: int):
    """An empty cache with `length` slots per row."""
    module, spec = decoder

    def shapes():
        tokens = jnp.zeros((batch, length), jnp.int32)
        with nn.logical_axis_rules(AXIS_RULES):
            _, variables = module(spec).apply(
                {"params": params}, tokens, tokens, tokens, mutable=["cache"])
        return variables["cache"]
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(shapes))


def reorder(cache, rows):
    """The cache with its batch rows taken in the order `rows` (beam search follows beams)."""
    def take(path, leaf):
        axis = _BATCH_AXIS_FROM_END.get(path[-1].key)
        return leaf if axis is None else jnp.take(leaf, rows, axis=leaf.ndim - axis)
    return jax.tree_util.tree_map_with_path(take, cache)
