"""Rotary position embeddings (Su et al. 2021), in the rotate-half layout that Hugging Face's
Llama uses, so checkpoints convert without permuting the query/key weights."""

from __future__ import annotations

import jax.numpy as jnp


def rope_tables(positions_BT, head_dim: int, theta: float):
    """(sin, cos) [B, T, 1, head_dim/2] of position * theta^(-2i/head_dim), in fp32: bf16
    angles lose the low bits of large positions. The model computes them once per forward
    pass and every layer reuses them (computed per layer they cost a bench36m CPU step ~3%)."""
    inv_freq_K = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angle_BTK = positions_BT.astype(jnp.float32)[..., None] * inv_freq_K
    return jnp.sin(angle_BTK)[:, :, None, :], jnp.cos(angle_BTK)[:, :, None, :]


def apply_rope(x_BTNH, tables):
    """Rotates channel pairs (i, i + H/2) by the angles of `rope_tables`, in fp32."""
    sin_BT1K, cos_BT1K = tables
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos_BT1K - x2 * sin_BT1K, x2 * cos_BT1K + x1 * sin_BT1K], -1)
    return rotated.astype(x_BTNH.dtype)
