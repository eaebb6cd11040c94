"""Causal attention for the CPU: blocks of queries, each against only the keys up to its last
query, with a backward pass written out by hand.

Why by hand: on a CPU the score products have a contraction of only head_dim (64) and run at
the speed memory takes their output, so what decides the time is how many score-sized arrays
are written and read, and in what precision. Autodiff of the plain formula keeps the fp32
probabilities, re-applies the mask and reduces dP * P over the whole score matrix; this
backward keeps only the bf16 probabilities the forward pass already made, takes the softmax
term from the outputs (rowsum(dO * O), FlashAttention's identity), and computes the keys' and
values' gradients one key block at a time so each is a single product with a single rounding.
Forward + backward of one bench36m layer: 47 -> 32 ms (scripts/benchmark.py measures the step).
Unlike FlashAttention it does not recompute the scores: on this hardware that cost more than
the memory it saves (147 vs 112 ms a layer, measured).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Masked scores: large and finite, so that a row with nothing to attend to gives no NaN.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def blockwise_causal_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, block: int):
    """Causal, document-masked (when `segment_ids_BT` is given), grouped-query attention, equal
    to `jax.nn.dot_product_attention(..., is_causal=True)`, computed `block` queries at a time:
    the causal upper triangle of blocks is never computed."""
    groups = q_BTNH.shape[2] // k_BTKH.shape[2]
    if groups > 1:  # Query head n reads key/value head n // groups, as in XLA's attention.
        k_BTKH, v_BTKH = (jnp.repeat(x, groups, axis=2) for x in (k_BTKH, v_BTKH))
    heads_major = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [B,T,N,H] <-> [B,N,T,H]
    out_BNTH = _attention(heads_major(q_BTNH), heads_major(k_BTKH), heads_major(v_BTKH),
                          segment_ids_BT, block)
    return heads_major(out_BNTH)


def _blocks(length: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, length)) for start in range(0, length, block)]


def _mask(segment_ids_BT, start: int, end: int):
    """[B or 1, 1, end - start, end]: query start + i may see key j."""
    mask = (jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :])[None, None]
    if segment_ids_BT is not None:
        mask = mask & (segment_ids_BT[:, None, start:end, None]
                       == segment_ids_BT[:, None, None, :end])
    return mask


def _forward(q_BNTH, k_BNTH, v_BNTH, segment_ids_BT, block):
    """(output, per query block its probabilities [B, N, block, keys so far] in the inputs'
    dtype). Scores and softmax in fp32, as XLA's attention computes them."""
    scale = q_BNTH.shape[-1] ** -0.5
    outs, probs = [], []
    for start, end in _blocks(q_BNTH.shape[2], block):
        scores = jnp.einsum("bnqh,bnkh->bnqk", q_BNTH[:, :, start:end], k_BNTH[:, :, :end],
                            preferred_element_type=jnp.float32) * scale
        p = jax.nn.softmax(jnp.where(_mask(segment_ids_BT, start, end), scores, _MASKED), axis=-1)
        p = p.astype(q_BNTH.dtype)
        outs.append(jnp.einsum("bnqk,bnkh->bnqh", p, v_BNTH[:, :, :end]))
        probs.append(p)
    return jnp.concatenate(outs, axis=2), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q_BNTH, k_BNTH, v_BNTH, segment_ids_BT, block):
    return _forward(q_BNTH, k_BNTH, v_BNTH, segment_ids_BT, block)[0]


def _attention_fwd(q_BNTH, k_BNTH, v_BNTH, segment_ids_BT, block):
    out_BNTH, probs = _forward(q_BNTH, k_BNTH, v_BNTH, segment_ids_BT, block)
    return out_BNTH, (q_BNTH, k_BNTH, v_BNTH, segment_ids_BT, out_BNTH, probs)


def _attention_bwd(block, residuals, dout_BNTH):
    q_BNTH, k_BNTH, v_BNTH, segment_ids_BT, out_BNTH, probs = residuals
    scale = q_BNTH.shape[-1] ** -0.5
    blocks = _blocks(q_BNTH.shape[2], block)
    # dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O): a [B, N, T] sum.
    delta_BNT1 = jnp.sum(dout_BNTH.astype(jnp.float32) * out_BNTH.astype(jnp.float32), axis=-1,
                         keepdims=True)
    dq, dscores = [], []
    for (start, end), p in zip(blocks, probs):
        dp = jnp.einsum("bnqh,bnkh->bnqk", dout_BNTH[:, :, start:end], v_BNTH[:, :, :end],
                        preferred_element_type=jnp.float32)
        ds = (p.astype(jnp.float32) * (dp - delta_BNT1[:, :, start:end]) * scale).astype(p.dtype)
        dq.append(jnp.einsum("bnqk,bnkh->bnqh", ds, k_BNTH[:, :, :end]))
        dscores.append(ds)
    # Key block j is seen by query blocks j, j+1, ...: their columns of P and dS, stacked.
    dk, dv = [], []
    for j, (start, end) in enumerate(blocks):
        p_cols = jnp.concatenate([p[..., start:end] for p in probs[j:]], axis=2)
        ds_cols = jnp.concatenate([ds[..., start:end] for ds in dscores[j:]], axis=2)
        dv.append(jnp.einsum("bnqk,bnqh->bnkh", p_cols, dout_BNTH[:, :, start:]))
        dk.append(jnp.einsum("bnqk,bnqh->bnkh", ds_cols, q_BNTH[:, :, start:]))
    return (jnp.concatenate(dq, axis=2), jnp.concatenate(dk, axis=2), jnp.concatenate(dv, axis=2),
            None)


_attention.defvjp(_attention_fwd, _attention_bwd)
