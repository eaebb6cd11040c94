"""Attention for the CPU: blocks of queries, each against only the keys it may see (causal: the
keys up to its last query; bidirectional: all of them), with a backward pass written out by
hand.

Why by hand: on a CPU the score products have a contraction of only head_dim (64) and run at
the speed memory takes their output, so what decides the time is how many score-sized arrays
are written and read, and in what precision. Autodiff of the plain formula keeps the fp32
probabilities, re-applies the mask and reduces dP * P over the whole score matrix; this
backward keeps only the bf16 probabilities the forward pass already made, takes the softmax
term from the outputs (rowsum(dO * O), FlashAttention's identity), and computes the keys' and
values' gradients one key block at a time (causal) or in one product (bidirectional), so each
has a single rounding.
Forward + backward of one bench36m layer: 47 -> 32 ms (scripts/benchmark.py measures the step).
Unlike FlashAttention it does not recompute the scores: on this hardware that cost more than
the memory it saves (147 vs 112 ms a layer, measured).

An additive bias on the scores (T5's relative positions) is added per block, and its gradient is
the fp32 score gradient summed over the batch. Without it T5 ran XLA's attention, whose
score-sized fp32 masks and copies cost t5-bench36m 4% of its step and 0.54 GB of peak memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Masked scores: large and finite, so that a row with nothing to attend to gives no NaN.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def blockwise_attention(q_BTNH, k_BSKH, v_BSKH, segment_ids_BT, block: int, causal: bool = True,
                        kv_segment_ids_BS=None, prefix_BT=None, bias_1NTS=None, scale: float | None = None):
    """Document-masked (when `segment_ids_BT` is given), grouped-query attention, equal to
    `jax.nn.dot_product_attention(..., is_causal=causal)`, computed `block` queries at a time.
    Causal, the upper triangle of blocks is never computed, unless `prefix_BT` marks a prefix
    every query of its document may see (prefix LM: key j is seen by query i when j <= i or j
    is in the prefix). Bidirectional, keys may be a different sequence (cross-attention, S
    keys) with their own segment ids (`kv_segment_ids_BS`, default: the queries'). `bias_1NTS`
    ([1 or B, N, T, S]) is added to the scores, which are scaled by `scale` (default
    head_dim^-0.5) first."""
    groups = q_BTNH.shape[2] // k_BSKH.shape[2]
    if groups > 1:  # Query head n reads key/value head n // groups, as in XLA's attention.
        # Repeated in fp32, so the backward pass sums the group's gradients in fp32.
        k_BSKH, v_BSKH = (jnp.repeat(x.astype(jnp.float32), groups, axis=2).astype(x.dtype)
                          for x in (k_BSKH, v_BSKH))
    if segment_ids_BT is not None and kv_segment_ids_BS is None:
        kv_segment_ids_BS = segment_ids_BT
    heads_major = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [B,T,N,H] <-> [B,N,T,H]
    scale = q_BTNH.shape[-1] ** -0.5 if scale is None else scale
    out_BNTH = _attention(heads_major(q_BTNH), heads_major(k_BSKH), heads_major(v_BSKH),
                          segment_ids_BT, kv_segment_ids_BS, prefix_BT, bias_1NTS, block, causal, scale)
    return heads_major(out_BNTH)


def _blocks(length: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, length)) for start in range(0, length, block)]


def _keys(start: int, end: int, keys: int, causal: bool, prefix_BT) -> int:
    """How many keys query block [start, end) sees (a prefix of them)."""
    return end if causal and prefix_BT is None else keys


def _mask(q_segments_BT, kv_segments_BS, prefix_BT, start: int, end: int, keys: int, causal: bool):
    """[B or 1, 1, end - start, keys] or None: query start + i may see key j."""
    mask = None
    if causal:
        mask = (jnp.arange(start, end)[:, None] >= jnp.arange(keys)[None, :])[None, None]
        if prefix_BT is not None:
            mask = mask | prefix_BT[:, None, None, :keys].astype(bool)
    if q_segments_BT is not None:
        same = q_segments_BT[:, None, start:end, None] == kv_segments_BS[:, None, None, :keys]
        mask = same if mask is None else mask & same
    return mask


def _forward(q_BNTH, k_BNSH, v_BNSH, q_segments_BT, kv_segments_BS, prefix_BT, bias_1NTS, block, causal,
             scale):
    """(output, per query block its probabilities [B, N, block, keys it sees] in the inputs'
    dtype). Scores and softmax in fp32, as XLA's attention computes them."""
    outs, probs = [], []
    for start, end in _blocks(q_BNTH.shape[2], block):
        keys = _keys(start, end, k_BNSH.shape[2], causal, prefix_BT)
        scores = jnp.einsum("bnqh,bnkh->bnqk", q_BNTH[:, :, start:end], k_BNSH[:, :, :keys],
                            preferred_element_type=jnp.float32) * scale
        if bias_1NTS is not None:
            scores = scores + bias_1NTS[:, :, start:end, :keys].astype(jnp.float32)
        mask = _mask(q_segments_BT, kv_segments_BS, prefix_BT, start, end, keys, causal)
        p = jax.nn.softmax(scores if mask is None else jnp.where(mask, scores, _MASKED), axis=-1)
        p = p.astype(q_BNTH.dtype)
        outs.append(jnp.einsum("bnqk,bnkh->bnqh", p, v_BNSH[:, :, :keys]))
        probs.append(p)
    return jnp.concatenate(outs, axis=2), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _attention(q_BNTH, k_BNSH, v_BNSH, q_segments_BT, kv_segments_BS, prefix_BT, bias_1NTS, block, causal, scale):
    return _forward(q_BNTH, k_BNSH, v_BNSH, q_segments_BT, kv_segments_BS, prefix_BT, bias_1NTS, block, causal,
                    scale)[0]


def _attention_fwd(q_BNTH, k_BNSH, v_BNSH, q_segments_BT, kv_segments_BS, prefix_BT, bias_1NTS, block, causal,
                   scale):
    out_BNTH, probs = _forward(q_BNTH, k_BNSH, v_BNSH, q_segments_BT, kv_segments_BS, prefix_BT, bias_1NTS, block,
                               causal, scale)
    return out_BNTH, (q_BNTH, k_BNSH, v_BNSH, q_segments_BT, kv_segments_BS, prefix_BT, bias_1NTS, out_BNTH, probs)


def _attention_bwd(block, causal, scale, residuals, dout_BNTH):
    q_BNTH, k_BNSH, v_BNSH, q_segments_BT, kv_segments_BS, prefix_BT, bias_1NTS, out_BNTH, probs = residuals
    blocks = _blocks(q_BNTH.shape[2], block)
    # dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O): a [B, N, T] sum.
    delta_BNT1 = jnp.sum(dout_BNTH.astype(jnp.float32) * out_BNTH.astype(jnp.float32), axis=-1,
                         keepdims=True)
    dq, dscores, dbias = [], [], []
    for (start, end), p in zip(blocks, probs):
        keys = p.shape[-1]
        dp = jnp.einsum("bnqh,bnkh->bnqk", dout_BNTH[:, :, start:end], v_BNSH[:, :, :keys],
                        preferred_element_type=jnp.float32)
        dbiased = p.astype(jnp.float32) * (dp - delta_BNT1[:, :, start:end])  # d(scores + bias).
        ds = (dbiased * scale).astype(p.dtype)
        dq.append(jnp.einsum("bnqk,bnkh->bnqh", ds, k_BNSH[:, :, :keys]))
        dscores.append(ds)
        if bias_1NTS is not None:  # Keys a causal block does not see have no gradient.
            summed = jnp.sum(dbiased, axis=0, keepdims=True) if bias_1NTS.shape[0] == 1 else dbiased
            dbias.append(jnp.pad(summed, ((0, 0), (0, 0), (0, 0), (0, k_BNSH.shape[2] - keys))))
    if causal and prefix_BT is None:
        # Key block j is seen by query blocks j, j+1, ...: their columns of P and dS, stacked.
        dk, dv = [], []
        for j, (start, end) in enumerate(blocks):
            p_cols = jnp.concatenate([p[..., start:end] for p in probs[j:]], axis=2)
            ds_cols = jnp.concatenate([ds[..., start:end] for ds in dscores[j:]], axis=2)
            dv.append(jnp.einsum("bnqk,bnqh->bnkh", p_cols, dout_BNTH[:, :, start:]))
            dk.append(jnp.einsum("bnqk,bnqh->bnkh", ds_cols, q_BNTH[:, :, start:]))
        dk_BNSH, dv_BNSH = jnp.concatenate(dk, axis=2), jnp.concatenate(dv, axis=2)
    else:  # Every query block sees every key (masked or not): one product each over all queries.
        p_all, ds_all = jnp.concatenate(probs, axis=2), jnp.concatenate(dscores, axis=2)
        dv_BNSH = jnp.einsum("bnqk,bnqh->bnkh", p_all, dout_BNTH)
        dk_BNSH = jnp.einsum("bnqk,bnqh->bnkh", ds_all, q_BNTH)
    dbias_1NTS = None if bias_1NTS is None else jnp.concatenate(dbias, axis=2).astype(bias_1NTS.dtype)
    return jnp.concatenate(dq, axis=2), dk_BNSH, dv_BNSH, None, None, None, dbias_1NTS


_attention.defvjp(_attention_fwd, _attention_bwd)
