"""The output projection onto the vocabulary, and the two ways a loss asks for it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.model.spec import ModelSpec

LOGITS_ACT = ("activation_batch", "activation_length", "activation_vocab")


@jax.custom_vjp
def fp32_product(x_ND, w_VD):
    """x @ w.T accumulated and returned in fp32, its gradients computed in the inputs' dtype.
    The loss needs fp32 logits (log-softmax over a large vocabulary); the gradient of the
    logits, once the loss has formed it in fp32, needs no more than any other layer's, and an
    fp32 cotangent would turn both backward products into fp32 matmuls (XLA converts a bf16
    operand to meet an fp32 one; on a 2-core CPU 1.8x slower each). The forward product keeps
    bf16 operands and accumulates in fp32, which XLA:CPU runs on its bf16 kernel (see
    llmjax/cpu_runtime.py)."""
    return jax.lax.dot_general(x_ND, w_VD, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _fp32_product_fwd(x_ND, w_VD):
    return fp32_product(x_ND, w_VD), (x_ND, w_VD)


def _fp32_product_bwd(residuals, g_NV):
    x_ND, w_VD = residuals
    g_NV = g_NV.astype(x_ND.dtype)
    return (jax.lax.dot_general(g_NV, w_VD, (((1,), (0,)), ((), ()))),
            jax.lax.dot_general(g_NV, x_ND, (((0,), (0,)), ((), ()))))


fp32_product.defvjp(_fp32_product_fwd, _fp32_product_bwd)


def output_logits(x_BTD, w_VD, spec: ModelSpec, bias_V=None):
    """The output projection as one 2-D matmul over flattened tokens (see `Projection` for
    why), returned in fp32. With `spec.fp32_logits` accumulated and kept in fp32 (only the
    backward products run in the compute dtype, see `fp32_product`); else rounded to the
    compute dtype on the way out, as bf16 autocast does (the loss is still fp32;
    scripts/benchmark.py --variant bf16logits:model.fp32_logits=False measures the difference).
    `bias_V`, when given (BERT's output bias), is added in fp32."""
    b, t, d = x_BTD.shape
    x_ND = x_BTD.reshape(b * t, d).astype(spec.compute_dtype)
    w_VD = jnp.asarray(w_VD, spec.compute_dtype)
    if spec.fp32_logits:
        logits_NV = fp32_product(x_ND, w_VD)
    else:
        logits_NV = jnp.dot(x_ND, w_VD.T, preferred_element_type=spec.compute_dtype).astype(jnp.float32)
    logits_BTV = logits_NV.reshape(b, t, w_VD.shape[0])
    if bias_V is not None:
        logits_BTV = logits_BTV + jnp.asarray(bias_V, jnp.float32)
    return nn.with_logical_constraint(logits_BTV, LOGITS_ACT)


def head_output(x_BTD, w_VD, spec: ModelSpec, with_head: bool, bias_V=None):
    """fp32 logits; without the head, (final hidden states, logits_fn) instead, where
    `logits_fn(h_BCD)` gives the logits of any slice of them, so a loss need never hold all."""
    if with_head:
        return output_logits(x_BTD, w_VD, spec, bias_V)
    return x_BTD, lambda h_BCD: output_logits(h_BCD, w_VD, spec, bias_V)
