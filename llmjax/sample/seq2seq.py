"""Generation from an encoder-decoder (T5): the inputs are encoded once, then the decoder starts
from its start token and adds one token per step, with a key/value cache of its own tokens and
cross-attention to the encoded inputs, in the loops decoders use (sampling or beam search).

The inputs are right-padded: the encoder's relative positions count from each row's first
token, and padding is a segment of its own, which neither the real inputs nor the decoder see.
Beam search encodes each input once per beam, so the beams of a row share nothing that
reordering would have to follow but the decoder's cache."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.errors import LlmjaxError
from llmjax.model import registry
from llmjax.parallel.rules import AXIS_RULES
from llmjax.sample import cached
from llmjax.finetune.params import backbone
from llmjax.sample.generate import check
from llmjax.sample.search import Settings, search


def is_seq2seq(config) -> bool:
    return hasattr(registry.of(config).math(), "seq2seq")


def seq2seq_model(config):
    """(module class, spec), both hashable, for jitted generation; a family that is not an
    encoder-decoder is refused."""
    if not is_seq2seq(config):
        raise LlmjaxError(f"the {config.model.family} family is not an encoder-decoder.")
    return registry.of(config).math().seq2seq(config)


def right_pad(inputs: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, S], segment ids [B, S]: 1 on the inputs, 0 on the padding)."""
    length = max(len(x) for x in inputs)
    tokens = np.full((len(inputs), length), pad_id, np.int32)
    segments = np.zeros((len(inputs), length), np.int32)
    for row, x in enumerate(inputs):
        tokens[row, :len(x)] = x
        segments[row, :len(x)] = 1
    return tokens, segments


def generate_seq2seq(params, config, inputs: list[list[int]], settings: Settings, *, eos_ids: tuple[int, ...],
                     pad_id: int, start_id: int, seed: int = 0, keep_logits: bool = False) -> dict:
    """As `llmjax.sample.generate.generate`, the decoder's new tokens for each input (the start
    token not included), as numpy arrays."""
    check(inputs, settings, None)
    params = backbone(params, config)  # A fine-tuning run's: adapters merged.
    tokens, segments = right_pad(inputs, pad_id)
    eos = jnp.asarray(tuple(eos_ids) or (-1,), jnp.int32)
    out = _run(params, tokens, segments, jax.random.key(seed), eos, jnp.int32(pad_id), jnp.int32(start_id),
               model=seq2seq_model(config), settings=settings, keep_logits=keep_logits)
    return jax.tree.map(np.asarray, out)


def _apply(model, variables, method, *args, mutable=False):
    module, spec = model
    with nn.logical_axis_rules(AXIS_RULES):
        return module(spec).apply(variables, *args, method=method, mutable=mutable)


@functools.partial(jax.jit, static_argnames=("model", "settings", "keep_logits"))
def _run(params, tokens_BS, segments_BS, rng, eos_ids, pad_id, start_id, *, model, settings: Settings,
         keep_logits: bool):
    if settings.num_beams > 1:
        tokens_BS, segments_BS = (jnp.repeat(x, settings.num_beams, 0) for x in (tokens_BS, segments_BS))
    params, model = cached.unrolled(params, model)
    encoded_BSD = _apply(model, {"params": params}, "encode", tokens_BS, segments_BS)
    batch = tokens_BS.shape[0]
    # The start token fills the first slot before the loop.
    slots, stages = cached.growth(1, 1 + settings.max_new_tokens, settings.grow_cache)
    ones_B1 = jnp.ones((batch, 1), jnp.int32)

    def step(state, tokens_B):
        """The logits [B, V] of the next token after `tokens_B`, written at slot `position`."""
        cache, position = state
        logits_B1V, variables = _apply(model, {"params": params, "cache": cache}, "decode", encoded_BSD,
                                       segments_BS, tokens_B[:, None], ones_B1 * position, ones_B1,
                                       mutable=["cache"])
        return logits_B1V[:, 0], (variables["cache"], position + 1)

    def empty_cache():
        slots_BT = jnp.ones((batch, slots), jnp.int32)
        _, variables = _apply(model, {"params": params}, "decode", encoded_BSD, segments_BS, slots_BT,
                              None, slots_BT, mutable=["cache"])
        return variables["cache"]
    cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(empty_cache))
    logits_BV, state = step((cache, jnp.int32(0)), jnp.full((batch,), start_id, jnp.int32))
    return search(step, lambda state, rows: (cached.reorder(state[0], rows), state[1]), state, logits_BV, rng,
                  eos_ids, pad_id, settings=settings, keep_logits=keep_logits, stages=stages)
