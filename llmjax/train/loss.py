"""Next-token cross-entropy in fp32, returned as sums so microbatches and devices add exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits_BTV, targets_BT, weights_BT, z_loss: float = 0.0):
    """(sum of weighted NLL, sum of weighted z-loss, sum of weights). Weight 0 masks a token
    (padding, or a target across a document boundary). z-loss (PaLM) penalises log(Z)^2 so
    the softmax normaliser stays near 1 and bf16 logits keep their precision."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    nll = jnp.sum((log_z_BT - target_logit_BT) * weights_BT)
    z = z_loss * jnp.sum(jnp.square(log_z_BT) * weights_BT)
    return nll, z, jnp.sum(weights_BT)
