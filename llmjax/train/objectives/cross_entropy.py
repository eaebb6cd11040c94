"""Next-token cross-entropy in fp32, returned as sums so microbatches and devices add exactly."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def mean(total: float, count: float) -> float:
    """An evaluation's per-token (or per-example) mean; NaN when nothing was scored, which a
    loss of 0 would hide as the best run of a sweep."""
    return total / count if count > 0 else math.nan


def token_nll(logits_BTV, targets_BT):
    """(NLL of every target [B, T], log of the softmax normaliser [B, T]), in fp32."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return log_z_BT - target_logit_BT, log_z_BT


def cross_entropy_sums(logits_BTV, targets_BT, weights_BT, z_loss: float = 0.0):
    """(sum of weighted NLL, sum of weighted z-loss, sum of weights). Weight 0 masks a token
    (padding, or a target across a document boundary). z-loss (PaLM) penalises log(Z)^2 so
    the softmax normaliser stays near 1 and bf16 logits keep their precision."""
    nll_BT, log_z_BT = token_nll(logits_BTV, targets_BT)
    nll = jnp.sum(nll_BT * weights_BT)
    z = z_loss * jnp.sum(jnp.square(log_z_BT) * weights_BT)
    return nll, z, jnp.sum(weights_BT)


def chunked_cross_entropy_sums(h_BTD, logits_fn, targets_BT, weights_BT, z_loss: float,
                               chunk_len: int):
    """The sums of `cross_entropy_sums(logits_fn(h_BTD), ...)`, computed `chunk_len` positions
    at a time. Full fp32 logits are [batch, length, vocab]: with a large vocabulary they, and
    the gradient of the same shape, dominate activation memory. Here each chunk's logits are
    recomputed in the backward pass (jax.checkpoint) instead of stored, so only [batch,
    chunk_len, vocab] exist at a time, for one extra output-projection matmul. Chunks split
    the sequence axis, so a batch sharded over devices stays sharded."""
    b, t = targets_BT.shape
    count = t // chunk_len

    def split(x):  # [B, T, ...] -> [count, B, chunk_len, ...]
        return jnp.swapaxes(x.reshape(b, count, chunk_len, *x.shape[2:]), 0, 1)

    @jax.checkpoint
    def chunk_sums(h_BCD, targets_BC, weights_BC):
        return cross_entropy_sums(logits_fn(h_BCD), targets_BC, weights_BC, z_loss)

    def accumulate(totals, chunk):
        return jax.tree.map(jnp.add, totals, chunk_sums(*chunk)), None

    zeros = (jnp.zeros((), jnp.float32),) * 3
    totals, _ = jax.lax.scan(accumulate, zeros, (split(h_BTD), split(targets_BT), split(weights_BT)))
    return totals
