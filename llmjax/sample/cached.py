"""The model as a decoder with a key/value cache: the family's own module and the training
parameters, applied with Flax's "cache" collection mutable (see
`llmjax/model/layers/kv_cache.py`). Any family whose math offers `decoder(config)` decodes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

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
# Axis of the slots in each leaf that has them, counted from the end.
_SLOT_AXIS_FROM_END = {"cached_key": 2, "cached_value": 2, "cached_segment_ids": 1}
# A growing cache grows by this many slots at a time (more when that would take more stages).
GROWTH_CHUNK, MAX_STAGES = 64, 4


def inference_decoder(config):
    """(module class, spec): the spec is hashable, so jitted decoding takes both as static
    arguments. A family without a cached decoder is refused."""
    math = registry.of(config).math()
    if not hasattr(math, "decoder"):
        raise LlmjaxError(f"the {config.model.family} family has no cached decoder; it cannot "
                          f"generate text with llmjax-sample.")
    return math.decoder(config)


def unrolled(params, decoder):
    """(params, decoder) with scanned layers as separate per-layer subtrees ("layers" [N, ...]
    -> "layers_0" ... "layers_{N-1}") and a spec that applies them unrolled. Decoding from
    stacked params would slice every layer's weights out of the stack inside the decode loop,
    once per token: at bench36m batch 1 that copy cost more than the token's own matmuls. Split
    once, before the loop, the weights are read where they lie."""
    module, spec = decoder
    if not getattr(spec, "scan_layers", False):
        return params, decoder

    def split(tree):
        if not isinstance(tree, Mapping):
            return tree
        out = {}
        for key, sub in tree.items():
            if key == "layers":
                for i in range(jax.tree.leaves(sub)[0].shape[0]):
                    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], sub)
            else:
                out[key] = split(sub)
        return out
    return split(params), (module, dataclasses.replace(spec, scan_layers=False))


def forward(params, cache, tokens_BT, positions_BT, segment_ids_BT, *, decoder, last_only: bool = False,
            prefix_BT=None):
    """(fp32 logits [B, T, V], updated cache): the T tokens are appended to the cache. With
    `last_only`, the logits [B, 1, V] of the last token alone: a prompt's next token needs no
    others, and the output layer over every prompt token was a quarter of a prefill's FLOPs
    at bench36m (vocabulary 8192, d_model 512). `prefix_BT` marks a prefix LM's prompt."""
    module, spec = decoder
    prefix = {} if prefix_BT is None else {"prefix_BT": prefix_BT}  # Only the families that train so take it.
    with nn.logical_axis_rules(AXIS_RULES):
        out, variables = module(spec).apply(
            {"params": params, "cache": cache}, tokens_BT, positions_BT, segment_ids_BT, not last_only,
            mutable=["cache"], **prefix)
        if last_only:
            hidden_BTD, logits_fn = out
            out = logits_fn(hidden_BTD[:, -1:])
    return out, variables["cache"]


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


def growth(start: int, final: int, grow_cache: bool):
    """(the cache's length before the decoding loop, the loop's stages for
    `llmjax.sample.search`): the cache, holding `start` filled slots when the loop begins,
    ends with `final` slots; with `grow_cache` it grows a chunk at a time as the tokens need
    the slots (the loop's state is (cache, ...)).

    Each step's attention reads every slot of the cache, the empty ones too: at bench36m, batch
    16, a step over 384 slots took 16.2 ms and one over 256 slots 13.0 ms
    (`scripts/bench_generate.py` measures the whole effect). Growing, a step reads about half a
    chunk of empty slots, but every chunk's loop is compiled apart (~1.5-2 s each there), so it
    pays when one compilation decodes many batches (evaluation) or long outputs, not for one
    short call; hence a setting, off by default."""
    if not grow_cache:
        return final, ()
    chunk = GROWTH_CHUNK * -(-(final - start) // (GROWTH_CHUNK * MAX_STAGES))
    lengths = list(range(start + chunk, final, chunk)) + [final]
    # The step that writes slot `now` is the first that needs the next length.
    return lengths[0], tuple((now - start, lambda state, n=n: (grow(state[0], n), *state[1:]))
                             for now, n in zip(lengths, lengths[1:]))


def grow(cache, length: int):
    """The cache with `length` slots, the new ones empty: segment id 0 (padding's), which no
    decoded token attends to, and beyond every filled slot."""
    def pad(path, leaf):
        axis = _SLOT_AXIS_FROM_END.get(path[-1].key)
        if axis is None:
            return leaf
        widths = [(0, 0)] * leaf.ndim
        widths[leaf.ndim - axis] = (0, length - leaf.shape[leaf.ndim - axis])
        return jnp.pad(leaf, widths)
    return jax.tree_util.tree_map_with_path(pad, cache)
