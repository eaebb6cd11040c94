"""The model as a decoder with a key/value cache: the same `Transformer` and parameters as
training, applied with Flax's "cache" collection mutable (see `llmjax/model/kv_cache.py`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.model.spec import ModelSpec
from llmjax.model.transformer import Transformer
from llmjax.parallel.rules import AXIS_RULES

# Axis of the batch in each cache leaf, counted from the end (a scanned stack adds a leading
# layer axis, so counting from the front would depend on config.model.scan_layers).
_BATCH_AXIS_FROM_END = {"cached_key": 4, "cached_value": 4, "cached_segment_ids": 2}


def inference_spec(config) -> ModelSpec:
    """The model's spec without rematerialisation: inference keeps nothing for a backward
    pass. A spec is hashable, so jitted decoding can take it as a static argument."""
    return ModelSpec.from_config(config.model.to_dict() | {"remat": "none"})


def forward(params, cache, tokens_BT, positions_BT, segment_ids_BT, *, spec: ModelSpec):
    """(fp32 logits [B, T, V], updated cache): the T tokens are appended to the cache."""
    with nn.logical_axis_rules(AXIS_RULES):
        logits, variables = Transformer(spec).apply(
            {"params": params, "cache": cache}, tokens_BT, positions_BT, segment_ids_BT,
            mutable=["cache"])
    return logits, variables["cache"]


def init_cache(params, spec: ModelSpec, batch: int, length: int):
    """An empty cache with `length` slots per row."""
    def shapes():
        tokens = jnp.zeros((batch, length), jnp.int32)
        with nn.logical_axis_rules(AXIS_RULES):
            _, variables = Transformer(spec).apply(
                {"params": params}, tokens, tokens, tokens, mutable=["cache"])
        return variables["cache"]
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(shapes))


def reorder(cache, rows):
    """The cache with its batch rows taken in the order `rows` (beam search follows beams)."""
    def take(path, leaf):
        axis = _BATCH_AXIS_FROM_END.get(path[-1].key)
        return leaf if axis is None else jnp.take(leaf, rows, axis=leaf.ndim - axis)
    return jax.tree_util.tree_map_with_path(take, cache)
