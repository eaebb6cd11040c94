"""Decoding loops over an abstract `step(state, tokens_B) -> (logits_BV, state)`, so the same
loops drive the cached model and, in tests, hand-made distributions. Both are
`jax.lax.while_loop`s that stop early once every row has produced an end-of-sequence token.
A loop may run in stages, the state transformed between them (a cache growing to hold the next
tokens, see `llmjax.sample.cached.growth`): `stages` lists (step, grow) pairs, and before
step `step` the state becomes `grow(state)`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmjax.sample.select import SampleError, Sampling, choose


@dataclasses.dataclass(frozen=True)
class Settings:
    max_new_tokens: int = 64
    sampling: Sampling = Sampling()
    num_beams: int = 1  # Above 1: beam search (deterministic; the sampling settings are unused).
    # Beam search ranks hypotheses by log-probability / length ** length_penalty, as transformers.
    length_penalty: float = 1.0
    # Grow the key/value cache as the tokens fill it (see `llmjax.sample.cached.growth`).
    grow_cache: bool = False

    def check(self) -> None:
        self.sampling.check()
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise SampleError("--max_new_tokens and --num_beams must be at least 1.")


def search(step, reorder, state, logits_BV, rng, eos_ids, pad_id, *, settings: Settings, keep_logits: bool,
           stages=()):
    """{"tokens": [B, N]} and "scores" [B] (beam search) or "logits" [B, N, V] (sampling, with
    keep_logits): the loop the settings choose, from the logits of each row's first new token."""
    if settings.num_beams > 1:
        tokens, scores = beam_search(step, reorder, state, logits_BV, num_beams=settings.num_beams,
                                     max_new_tokens=settings.max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                                     length_penalty=settings.length_penalty, stages=stages)
        return {"tokens": tokens, "scores": scores}
    tokens, history = sample_tokens(step, state, logits_BV, rng, max_new_tokens=settings.max_new_tokens,
                                    sampling=settings.sampling, eos_ids=eos_ids, pad_id=pad_id,
                                    keep_logits=keep_logits, stages=stages)
    return {"tokens": tokens} | ({"logits": history} if keep_logits else {})


def while_loop_in_stages(cond, body, carry, stages):
    """`jax.lax.while_loop(cond, body, carry)` for a carry (step, ..., state at index 4, ...),
    run as one loop per stage."""
    grows = [None] + [grow for _, grow in stages]
    ends = [end for end, _ in stages] + [None]
    for grow, end in zip(grows, ends):
        if grow is not None:
            carry = (*carry[:4], grow(carry[4]), *carry[5:])
        carry = jax.lax.while_loop(cond if end is None else (lambda c, end=end: cond(c) & (c[0] < end)),
                                   body, carry)
    return carry


def sample_tokens(step, state, logits_BV, rng, *, max_new_tokens: int, sampling: Sampling,
                  eos_ids, pad_id, keep_logits: bool = False, stages=()):
    """(tokens [B, N], logits [B, N, V] the tokens were chosen from, or None). A row that has
    produced one of `eos_ids` (an int array) is padded with `pad_id` from then on."""
    batch, vocab = logits_BV.shape

    def body(carry):
        i, tokens_BN, history_BNV, logits_BV, state, done_B, rng = carry
        rng, key = jax.random.split(rng)
        token_B = jnp.where(done_B, pad_id, choose(key, logits_BV, sampling))
        tokens_BN = tokens_BN.at[:, i].set(token_B)
        if keep_logits:
            history_BNV = history_BNV.at[:, i].set(logits_BV)
        done_B = done_B | jnp.isin(token_B, eos_ids)
        logits_BV, state = step(state, token_B)
        return i + 1, tokens_BN, history_BNV, logits_BV, state, done_B, rng

    def cond(carry):
        return (carry[0] < max_new_tokens) & ~jnp.all(carry[5])

    history = jnp.zeros((batch, max_new_tokens, vocab) if keep_logits else (0,), jnp.float32)
    carry = (0, jnp.full((batch, max_new_tokens), pad_id, jnp.int32), history, logits_BV, state,
             jnp.zeros(batch, bool), rng)
    _, tokens_BN, history, *_ = while_loop_in_stages(cond, body, carry, stages)
    return tokens_BN, history if keep_logits else None


def beam_search(step, reorder, state, logits_BV, *, num_beams: int, max_new_tokens: int,
                eos_ids, pad_id, length_penalty: float = 1.0, stages=()):
    """(tokens [B, N], summed log-probabilities [B]) of the best hypothesis, found as
    transformers' `generate(num_beams=W, length_penalty=p, early_stopping=False)` finds it, so an
    imported model gives transformers' sequences. The inputs hold B x W rows (beam-major within
    each batch row, all beams of a row identical); `reorder(state, rows)` makes the state follow
    the surviving beams.

    Each step takes the best 2W continuations (more with several end tokens) of the W running
    beams. Those among the best W that end (an end token, or the last step) are hypotheses,
    scored by their summed log-probability over (tokens generated) ** p (p > 0 favours longer
    ones) and kept if among a row's W best; the best W that do not end run on. A row stops
    once its best running beam, scored at its current length, is no better than its worst kept
    hypothesis (transformers' heuristic for early_stopping=False)."""
    rows, vocab = logits_BV.shape
    batch, width = rows // num_beams, num_beams
    keep = max(2, 1 + eos_ids.shape[0]) * width
    among_best_K = jnp.arange(keep) < width
    never = -1.0e9  # transformers' "impossible" score, added rather than set, as it does.

    def take(x, index):  # x [B, M, ...] at index [B, W'] along axis 1.
        return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)

    def body(carry):
        i, tokens_BWN, scores_BW, logits_BV, state, hyp_tokens_BWN, hyp_scores_BW, hyp_logp_BW, hyp_BW, open_B = carry
        logp_BWV = jax.nn.log_softmax(logits_BV, axis=-1).reshape(batch, width, vocab)
        candidates = (scores_BW[..., None] + logp_BWV).reshape(batch, width * vocab)
        scores_BK, index_BK = jax.lax.top_k(candidates, keep)
        origin_BK, token_BK = index_BK // vocab, (index_BK % vocab).astype(jnp.int32)
        tokens_BKN = take(tokens_BWN, origin_BK).at[:, :, i].set(token_BK)
        ends_BK = jnp.isin(token_BK, eos_ids) | (i + 1 >= max_new_tokens)
        # The best W continuations that do not end run on.
        scores_BW, pick_BW = jax.lax.top_k(scores_BK + never * ends_BK, width)
        tokens_BWN, origin_BW, token_BW = take(tokens_BKN, pick_BW), take(origin_BK, pick_BW), take(token_BK, pick_BW)
        # Those of the best W that end join the hypotheses if among the row's best W.
        joins_BK = ends_BK & among_best_K
        penalised_BK = (scores_BK / (i + 1.0) ** length_penalty + never * ~open_B[:, None] + never * ~joins_BK)
        merged = jnp.concatenate([hyp_scores_BW, penalised_BK], axis=1)
        _, best_BW = jax.lax.top_k(merged, width)
        hyp_scores_BW = take(merged, best_BW)
        hyp_tokens_BWN = take(jnp.concatenate([hyp_tokens_BWN, tokens_BKN], axis=1), best_BW)
        hyp_logp_BW = take(jnp.concatenate([hyp_logp_BW, scores_BK], axis=1), best_BW)
        hyp_BW = take(jnp.concatenate([hyp_BW, joins_BK], axis=1), best_BW)
        # Can the best running beam still beat the worst hypothesis kept?
        worst_BW = jnp.where(hyp_BW, hyp_scores_BW.min(axis=1, keepdims=True), never)
        open_B = open_B & jnp.any(scores_BW[:, :1] / (i + 1.0) ** length_penalty > worst_BW, axis=1)
        state = reorder(state, (jnp.arange(batch)[:, None] * width + origin_BW).reshape(-1))
        logits_BV, state = step(state, token_BW.reshape(-1))
        return (i + 1, tokens_BWN, scores_BW, logits_BV, state, hyp_tokens_BWN, hyp_scores_BW, hyp_logp_BW,
                hyp_BW, open_B)

    def cond(carry):
        return (carry[0] < max_new_tokens) & jnp.any(carry[-1])

    # Only the first beam of each row is live at the start: the others are copies of it.
    scores_BW = jnp.tile(jnp.where(jnp.arange(width) == 0, 0.0, never), (batch, 1))
    tokens_BWN = jnp.full((batch, width, max_new_tokens), pad_id, jnp.int32)
    carry = (0, tokens_BWN, scores_BW, logits_BV, state, tokens_BWN, jnp.full((batch, width), never),
             jnp.zeros((batch, width)), jnp.zeros((batch, width), bool), jnp.ones(batch, bool))
    *_, hyp_tokens_BWN, _, hyp_logp_BW, _, _ = while_loop_in_stages(cond, body, carry, stages)
    return hyp_tokens_BWN[:, 0], hyp_logp_BW[:, 0]
