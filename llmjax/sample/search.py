"""Decoding loops over an abstract `step(state, tokens_B) -> (logits_BV, state)`, so the same
loops drive the cached model and, in tests, hand-made distributions. Both are
`jax.lax.while_loop`s that stop early once every row has produced an end-of-sequence token."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmjax.sample.select import Sampling, choose


def sample_tokens(step, state, logits_BV, rng, *, max_new_tokens: int, sampling: Sampling,
                  eos_ids, pad_id, keep_logits: bool = False):
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
    _, tokens_BN, history, *_ = jax.lax.while_loop(cond, body, carry)
    return tokens_BN, history if keep_logits else None


def beam_search(step, reorder, state, logits_BV, *, num_beams: int, max_new_tokens: int,
                eos_ids, pad_id):
    """(tokens [B, N], summed log-probabilities [B]) of the best of `num_beams` beams. The
    inputs hold B x num_beams rows (beam-major within each batch row, all beams of a row
    identical); `reorder(state, rows)` makes the state follow the surviving beams. A beam that
    produced EOS is finished: it keeps its score and continues with pad tokens only. Scores are
    plain sums (no length penalty), the quantity beam search approximately maximises."""
    rows, vocab = logits_BV.shape
    batch, width = rows // num_beams, num_beams
    # Only the first beam of each row is live at the start: the others are copies of it.
    scores_BW = jnp.tile(jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf), (batch, 1))
    finished_V = jnp.full(vocab, -jnp.inf).at[pad_id].set(0.0)

    def body(carry):
        i, tokens_BWN, logits_BV, state, done_BW, scores_BW = carry
        logp_BWV = jax.nn.log_softmax(logits_BV, axis=-1).reshape(batch, width, vocab)
        logp_BWV = jnp.where(done_BW[..., None], finished_V, logp_BWV)
        candidates = (scores_BW[..., None] + logp_BWV).reshape(batch, width * vocab)
        scores_BW, index_BW = jax.lax.top_k(candidates, width)
        origin_BW, token_BW = index_BW // vocab, (index_BW % vocab).astype(jnp.int32)
        tokens_BWN = jnp.take_along_axis(tokens_BWN, origin_BW[..., None], axis=1)
        tokens_BWN = tokens_BWN.at[:, :, i].set(token_BW)
        done_BW = jnp.take_along_axis(done_BW, origin_BW, axis=1) | jnp.isin(token_BW, eos_ids)
        state = reorder(state, (jnp.arange(batch)[:, None] * width + origin_BW).reshape(-1))
        logits_BV, state = step(state, token_BW.reshape(-1))
        return i + 1, tokens_BWN, logits_BV, state, done_BW, scores_BW

    def cond(carry):
        return (carry[0] < max_new_tokens) & ~jnp.all(carry[4])

    carry = (0, jnp.full((batch, width, max_new_tokens), pad_id, jnp.int32), logits_BV, state,
             jnp.zeros((batch, width), bool), scores_BW)
    _, tokens_BWN, _, _, _, scores_BW = jax.lax.while_loop(cond, body, carry)
    best_B = jnp.argmax(scores_BW, axis=1)
    rows_B = jnp.arange(batch)
    return tokens_BWN[rows_B, best_B], scores_BW[rows_B, best_B]
