"""Muon (Jordan et al. 2024): momentum orthogonalised by Newton-Schulz iterations, for the
model's hidden matrices; what is not one (embeddings, norms, biases, the output layer, a task
head) stays with AdamW, as Muon's authors prescribe.

Which axes form the matrix comes from each parameter's logical axes, the same names the
sharding rules read: a kernel's input axes (those before its output, `embed` first for a
projection reading the residual stream, last for one writing it) are the matrix's rows, the
rest its columns, and `layers` (scanned stacks), `qkv` (GPT-2's fused projections), `gates`
(the LSTM's four) and `experts` (an MoE layer's) are batch axes, so every layer's query, key
and value, every gate or every expert's projection is orthogonalised as a matrix of its own. A
multi-axis side is flattened: the query projection [embed, heads, head_dim] is one d_model x
(heads * head_dim) matrix.

Sharding: the iteration is plain array algebra inside the jitted step, so under fsdp or tensor
parallelism XLA computes it on the whole matrix (gathering or reducing the products across the
shards), never per shard; tests/test_muon.py checks every mesh against one device.

The update is scaled by `optimizer.muon_rms` x sqrt(max(rows, columns)) (Liu et al. 2025,
"Muon is Scalable"), which gives it AdamW's typical RMS, so one learning rate and one weight
decay serve both halves of the optimizer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

from llmjax.finetune import EXTRA_KEYS
from llmjax.finetune.lora import input_dims
from llmjax.finetune.params import named_axes, path_name

BATCH_AXES = ("layers", "qkv", "gates", "experts")
MATRIX_LEAVES = ("kernel", "recurrent")  # The LSTM's recurrent weights are matrices too.


def dimension_numbers(name: str, axes: tuple) -> MuonDimensionNumbers | None:
    """The matrix of the parameter at `name` with logical `axes`, or None (AdamW's)."""
    if name.split("/")[0] in EXTRA_KEYS:
        return None
    if name.split("/")[-1] not in MATRIX_LEAVES and "experts" not in axes:  # Expert weights are bare arrays.
        return None
    matrix = [i for i, axis in enumerate(axes) if axis not in BATCH_AXES]
    if len(matrix) < 2:
        return None
    rows = input_dims(tuple(axes[i] for i in matrix)) or 1
    return MuonDimensionNumbers(reduction_axis=tuple(matrix[:rows]), output_axis=tuple(matrix[rows:]))


def matrices(param_axes) -> dict[str, MuonDimensionNumbers]:
    """{parameter path: its matrix} of every parameter Muon updates."""
    found = {name: dimension_numbers(name, axes) for name, axes in named_axes(param_axes).items()}
    return {name: dims for name, dims in found.items() if dims is not None}


def scale_by_muon(dims: dict[str, MuonDimensionNumbers], config) -> optax.GradientTransformation:
    """Orthogonalised Nesterov momentum at AdamW's RMS, for the parameters named in `dims`
    (inside optax.multi_transform, which hands the others over as MaskedNode)."""
    o = config.optimizer
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731

    def tree_of_dims(updates):
        return jax.tree_util.tree_map_with_path(lambda path, u: u if masked(u) else dims[path_name(path)],
                                                updates, is_leaf=masked)

    def rms_scale(updates, state, params=None):
        del params

        def scale(path, u):
            if masked(u):
                return u
            d = dims[path_name(path)]
            fan_in = math.prod(u.shape[i] for i in d.reduction_axis)
            fan_out = math.prod(u.shape[i] for i in d.output_axis)
            return u * jnp.asarray(o.muon_rms * math.sqrt(max(fan_in, fan_out)), u.dtype)
        return jax.tree_util.tree_map_with_path(scale, updates, is_leaf=masked), state

    return optax.chain(
        optax.contrib.scale_by_muon(beta=o.muon_beta, ns_steps=o.muon_ns_steps, weight_dimension_numbers=tree_of_dims),
        optax.GradientTransformation(lambda _: optax.EmptyState(), rms_scale))
