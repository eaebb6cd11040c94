"""Initialisers and the multi-axis linear projection every transformer family builds on."""

from __future__ import annotations

import itertools
import math

import flax.linen as nn
import jax.numpy as jnp

from llmjax.model.spec import ModelSpec


def weight_init(spec: ModelSpec, axes: tuple[str, ...], scale: float = 1.0):
    return nn.with_logical_partitioning(nn.initializers.normal(spec.init_scale * scale), axes)


def residual_scale(spec: ModelSpec) -> float:
    """Output projections into the residual stream start smaller, so the stream's variance does
    not grow with depth (GPT-2 / OLMo practice)."""
    return (2 * spec.num_layers) ** -0.5


def add_bias(y_ND, bias_D):
    """y + bias, the bias broadcast over tokens before it is cast to y's dtype: autodiff then
    sums its gradient over the tokens in the bias's dtype (fp32). Cast first, the sum would be
    a bf16 one, which XLA:CPU accumulates in bf16 as written (see llmjax/cpu_runtime.py),
    rounding away most of a sum over thousands of rows."""
    return y_ND + jnp.broadcast_to(bias_D, y_ND.shape).astype(y_ND.dtype)


class Projection(nn.Module):
    """A linear map (bias-free unless `use_bias`) whose kernel keeps its true multi-axis shape (e.g. [embed, heads,
    head_dim]) with a logical name per axis, so each axis can be sharded on its own. The last
    `in_ndim` axes of the input are contracted with the first `in_ndim` axes of the kernel.

    The product itself runs as one 2-D matmul over flattened tokens: XLA:CPU's bf16 backward
    pass for a [batch, length, ...] einsum is about 3.5x slower than for the same 2-D matmul
    (measured 76 vs 22 ms at 16x256x256x768), and the reshapes are free on every backend. The
    bias is added to the 2-D product too: its gradient is then a sum over one token axis, which
    XLA:CPU reduces in one pass, where over [batch, length] it split the sum into slow
    reduce-windows (bert-bench36m step 3.24 -> 2.89 s)."""
    spec: ModelSpec
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    in_ndim: int = 1
    scale: float = 1.0
    use_bias: bool = False  # GPT-2 and BERT have biases; Llama and T5 do not.

    @nn.compact
    def __call__(self, x):
        s = self.spec
        kernel = self.param("kernel", weight_init(s, self.axes, self.scale), self.shape,
                            s.storage_dtype)
        in_shape, out_shape = self.shape[:self.in_ndim], self.shape[self.in_ndim:]
        lead = x.shape[:x.ndim - self.in_ndim]
        x_2d = x.reshape(math.prod(lead), math.prod(in_shape)).astype(s.compute_dtype)
        w_2d = kernel.reshape(math.prod(in_shape), math.prod(out_shape)).astype(s.compute_dtype)
        y_2d = x_2d @ w_2d
        if self.use_bias:
            init = nn.with_logical_partitioning(nn.initializers.zeros, self.axes[self.in_ndim:])
            bias = self.param("bias", init, out_shape, s.storage_dtype)
            y_2d = add_bias(y_2d, bias.reshape(math.prod(out_shape)))
        return y_2d.reshape(*lead, *out_shape)


def project_together(module: nn.Module, projections: list[Projection], x):
    """[p(x) for p in projections], computed as one product over their kernels side by side
    when x holds one token per row: a decode step. There each product reads its weights for a
    single row, and XLA:CPU runs one matrix-vector product per kernel, each paying its own
    pass; one wide product instead (bench36m, one row, fp32: 7.1-7.5 -> 6.0-6.3 ms a token)
    costs a concatenation of the kernels that XLA hoists out of the decode loop, since the
    weights are loop-invariant. Elsewhere the products are large enough that fusing gains
    nothing, and the parameters stay separate, so checkpoints and Hugging Face exports do not
    change. Projections must be bias-free, contract one axis of x, and share `spec`."""
    if x.shape[-2] != 1 or module.is_initializing():
        return [p(x) for p in projections]
    s = projections[0].spec
    assert all(p.in_ndim == 1 and not p.use_bias and p.spec is s for p in projections)
    params = module.variables["params"]
    kernels = [nn.unbox(params[p.name]["kernel"]).reshape(x.shape[-1], -1) for p in projections]
    w_2d = jnp.concatenate(kernels, 1).astype(s.compute_dtype)
    y_2d = x.reshape(-1, x.shape[-1]).astype(s.compute_dtype) @ w_2d
    ends = list(itertools.accumulate(k.shape[1] for k in kernels))
    return [y.reshape(*x.shape[:-1], *p.shape[1:])
            for p, y in zip(projections, jnp.split(y_2d, ends[:-1], axis=1))]
