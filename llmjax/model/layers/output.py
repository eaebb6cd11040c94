"""The output projection onto the vocabulary, and the two ways a loss asks for it."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from llmjax.model.spec import ModelSpec

LOGITS_ACT = ("activation_batch", "activation_length", "activation_vocab")


def output_logits(x_BTD, w_VD, spec: ModelSpec, bias_V=None):
    """The output projection as one 2-D matmul over flattened tokens (see `Projection` for
    why), returned in fp32. Accumulated in fp32 and kept so with `spec.fp32_logits`; else
    rounded to the compute dtype on the way out, as bf16 autocast does (the loss is still
    fp32): on XLA:CPU the fp32-output product and its gradients take a slower path, and the
    output projection with the loss runs ~1.7x faster in bf16 at bench36m (scripts/benchmark.py
    --variant fp32:model.fp32_logits=True). `bias_V`, when given (BERT's output bias), is added
    in fp32."""
    b, t, d = x_BTD.shape
    out_dtype = jnp.float32 if spec.fp32_logits else spec.compute_dtype
    logits_BTV = jnp.dot(x_BTD.reshape(b * t, d).astype(spec.compute_dtype),
                         jnp.asarray(w_VD, spec.compute_dtype).T,
                         preferred_element_type=out_dtype).reshape(b, t, w_VD.shape[0])
    logits_BTV = logits_BTV.astype(jnp.float32)
    if bias_V is not None:
        logits_BTV = logits_BTV + jnp.asarray(bias_V, jnp.float32)
    return nn.with_logical_constraint(logits_BTV, LOGITS_ACT)


def head_output(x_BTD, w_VD, spec: ModelSpec, with_head: bool, bias_V=None):
    """fp32 logits; without the head, (final hidden states, logits_fn) instead, where
    `logits_fn(h_BCD)` gives the logits of any slice of them, so a loss need never hold all."""
    if with_head:
        return output_logits(x_BTD, w_VD, spec, bias_V)
    return x_BTD, lambda h_BCD: output_logits(h_BCD, w_VD, spec, bias_V)
