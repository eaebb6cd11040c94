"""Rotary position embeddings (Su et al. 2021), in the rotate-half layout that Hugging Face's
Llama uses, so checkpoints convert without permuting the query/key weights."""

from __future__ import annotations

import jax.numpy as jnp


def apply_rope(x_BTNH, positions_BT, theta: float):
    """Rotates channel pairs (i, i + H/2) by position * theta^(-2i/H). Computed in fp32: bf16
    angles lose the low bits of large positions."""
    head_dim = x_BTNH.shape[-1]
    inv_freq_K = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angle_BTK = positions_BT.astype(jnp.float32)[..., None] * inv_freq_K
    sin_BT1K = jnp.sin(angle_BTK)[:, :, None, :]
    cos_BT1K = jnp.cos(angle_BTK)[:, :, None, :]
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos_BT1K - x2 * sin_BT1K, x2 * cos_BT1K + x1 * sin_BT1K], -1)
    return rotated.astype(x_BTNH.dtype)
