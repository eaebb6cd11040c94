"""Generation from token prompts: left-pad the batch to a length bucket, prefill the cache with
the prompts in one forward pass, then decode one token per step inside a jitted loop (sampling
or beam search). Buckets (powers of two) bound the compilations: prompts of 100 or 128 tokens
run the same compiled loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llmjax import cpu_runtime
from llmjax.finetune.params import backbone
from llmjax.sample import cached
from llmjax.sample.search import Settings, search
from llmjax.sample.select import SampleError
from llmjax.train import objectives


SMALLEST_BUCKET = 16


def bucket(length: int, limit: int | None) -> int:
    """The padded length of a batch whose longest row has `length` tokens: the next power of
    two (at least SMALLEST_BUCKET), at most `limit` (None: no limit)."""
    padded = SMALLEST_BUCKET
    while padded < length:
        padded *= 2
    return padded if limit is None else max(min(padded, limit), length)


def compilations() -> int:
    """How many versions of the generation loop this process has compiled (one per batch
    size, bucket and settings)."""
    return _run._cache_size() + _run_one_row._cache_size()


def check(prompts: list[list[int]], settings: Settings, max_seq_len: int | None) -> None:
    """Raises SampleError naming the setting that cannot work; cheap, so callers can run it
    before loading a model. `max_seq_len` None: the model has no length limit (an
    encoder-decoder with relative positions, whose prompts are its inputs)."""
    settings.check()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise SampleError("every prompt needs at least one token.")
    longest = max(len(p) for p in prompts)
    if max_seq_len is not None and longest + settings.max_new_tokens > max_seq_len:
        raise SampleError(f"the longest prompt ({longest} tokens) plus --max_new_tokens "
                         f"{settings.max_new_tokens} exceeds model.max_seq_len={max_seq_len}; "
                         f"shorten one of them.")


def left_pad(prompts: list[list[int]], pad_id: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, T], mask [B, T]) with each prompt flush right in T = `length` (default: the
    longest) columns, so every row's next token goes in the same column. Positions come from
    the mask, so padding changes no logit."""
    length = length or max(len(p) for p in prompts)
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, length - len(prompt):] = prompt
        mask[row, length - len(prompt):] = 1
    return tokens, mask


def prefill(params, decoder, tokens_BT, mask_BT, cache_length: int, prompt_is_prefix: bool = False):
    """(logits [B, V] of each prompt's next token, decoding state (cache, next positions [B])).
    A prefix LM (`prompt_is_prefix`) reads its prompt bidirectionally, as it was trained to."""
    positions_BT = jnp.maximum(jnp.cumsum(mask_BT, axis=1) - 1, 0)
    cache = cached.init_cache(params, decoder, tokens_BT.shape[0], cache_length)
    logits_B1V, cache = cached.forward(params, cache, tokens_BT, positions_BT, mask_BT, decoder=decoder,
                                       last_only=True, prefix_BT=mask_BT if prompt_is_prefix else None)
    return logits_B1V[:, 0], (cache, positions_BT[:, -1] + 1)


def decode_step(params, decoder):
    """step(state, tokens_B) -> (logits [B, V], state): appends one token to every row."""
    def step(state, tokens_B):
        cache, positions_B = state
        logits_B1V, cache = cached.forward(params, cache, tokens_B[:, None], positions_B[:, None],
                                           jnp.ones_like(tokens_B)[:, None], decoder=decoder)
        return logits_B1V[:, 0], (cache, positions_B + 1)
    return step


def reorder_state(state, rows):
    cache, positions_B = state
    return cached.reorder(cache, rows), positions_B[rows]


def generate(params, config, prompts: list[list[int]], settings: Settings, *,
             eos_ids: tuple[int, ...], pad_id: int, seed: int = 0, keep_logits: bool = False) -> dict:
    """{"tokens": [B, N] new tokens (pad after EOS), and "logits" [B, N, V] (with keep_logits,
    sampling only) or "scores" [B] (beam search)}, as numpy arrays."""
    loop, args, static = prepare(params, config, prompts, settings, eos_ids=eos_ids, pad_id=pad_id,
                                 seed=seed, keep_logits=keep_logits)
    return jax.tree.map(np.asarray, loop(*args, **static))


def prepare(params, config, prompts, settings: Settings, *, eos_ids, pad_id: int, seed: int = 0,
            keep_logits: bool = False):
    """(jitted loop, its arguments, its static arguments) for `generate`, which calls them;
    tests lower them to read the compiled loop."""
    check(prompts, settings, config.model.max_seq_len)
    params = backbone(params, config)  # A fine-tuning run's: adapters merged, task head dropped.
    room = None if config.model.max_seq_len is None else config.model.max_seq_len - settings.max_new_tokens
    tokens, mask = left_pad(prompts, pad_id, bucket(max(len(p) for p in prompts), room))
    # End and pad ids are traced, not static: changing them does not recompile.
    eos = jnp.asarray(tuple(eos_ids) or (-1,), jnp.int32)
    static = {"decoder": cached.inference_decoder(config), "settings": settings,
              "cache_length": tokens.shape[1] + settings.max_new_tokens, "keep_logits": keep_logits,
              "prompt_is_prefix": objectives.of(config).prompt_is_prefix}
    loop = _run_one_row if len(prompts) * settings.num_beams == 1 else _run
    return loop, (params, tokens, mask, jax.random.key(seed), eos, jnp.int32(pad_id)), static


def _loop(params, tokens_BT, mask_BT, rng, eos_ids, pad_id, *, decoder, settings: Settings,
          cache_length: int, keep_logits: bool, prompt_is_prefix: bool = False):
    if settings.num_beams > 1:  # Every beam starts as a copy of its prompt.
        tokens_BT, mask_BT = (jnp.repeat(x, settings.num_beams, 0) for x in (tokens_BT, mask_BT))
    params, decoder = cached.unrolled(params, decoder)
    length, stages = cached.growth(tokens_BT.shape[1], cache_length, settings.grow_cache)
    logits_BV, state = prefill(params, decoder, tokens_BT, mask_BT, length, prompt_is_prefix)
    return search(decode_step(params, decoder), reorder_state, state, logits_BV, rng, eos_ids, pad_id,
                  settings=settings, keep_logits=keep_logits, stages=stages)


_STATIC = ("decoder", "settings", "cache_length", "keep_logits", "prompt_is_prefix")
_run = jax.jit(_loop, static_argnames=_STATIC)
# One row decodes through XLA:CPU's fp32 matrix-vector products; with float normalization their
# bf16 weights are converted once, before the loop, not at every token (llmjax/cpu_runtime.py).
_run_one_row = jax.jit(_loop, static_argnames=_STATIC, compiler_options=cpu_runtime.with_float_normalization())
