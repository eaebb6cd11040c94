"""A mixture-of-experts SwiGLU MLP: a router picks `top_k` of `num_experts` expert MLPs per
token (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral, Jiang et al. 2024), optionally
beside always-on shared experts (DeepSeekMoE, Dai et al. 2024).

Routing, two ways:
  - `topk_softmax`: the top-k router logits, softmaxed among themselves, weigh the chosen
    experts (weights sum to 1). This is exactly Mixtral's softmax-then-top-k-then-renormalise.
  - `softmax_topk`: the softmax over all experts, its top-k values used as they are (weights sum
    to less than 1; Switch, DeepSeek, Qwen-MoE without renormalisation).

Dispatch, two ways:
  - dropless (`capacity_factor` 0): token-expert pairs sorted by expert and multiplied group by
    group (MegaBlocks, Gale et al. 2022): `jax.lax.ragged_dot` grouped matmuls on GPU and TPU;
    on CPU, where XLA lowers ragged_dot to a masked product over all groups, blocks of rows
    each padded within its expert's group (`block_swiglu`). Every token reaches its experts.
  - capacity (`capacity_factor` c > 0): of each row, each expert takes at most
    c * length * k / experts pairs, filled in order of choice rank then token (a token's first
    choice before anyone's second, GShard's priority), into fixed [experts, capacity, d_model]
    buffers multiplied with one batched matmul; pairs over capacity are dropped (the token
    keeps its residual). Capacity is per row, so which pairs drop does not depend on how the
    batch is split over devices.

Expert parallelism: with a mesh whose `expert` axis is above 1, each device holds
experts / expert-axis-size experts; rows are split over the data, fsdp and expert axes, and
each device's buffers travel to their experts' devices by all-to-all and back (shard_map).

Auxiliary losses, as transformers' Mixtral computes them: the load-balancing loss
E * sum_k sum_e f_ke * P_e (f_ke: the fraction of tokens whose k-th choice is expert e, P_e:
its mean router probability; top_k when perfectly balanced), and the router z-loss, the mean squared log-sum-exp of
the router logits (ST-MoE, Zoph et al. 2022). `MoeMlp` returns them with the routing
statistics the trainer reports per layer: the fraction of pairs each expert got and the
fraction dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from llmjax.model.layers.activation import activate
from llmjax.model.layers.projection import Projection, weight_init

ROUTERS = ("topk_softmax", "softmax_topk")


@dataclasses.dataclass(frozen=True)
class MoeShape:
    num_experts: int
    top_k: int
    expert_dim: int  # Each expert's SwiGLU hidden width.
    router: str = "topk_softmax"
    capacity_factor: float = 0.0  # 0: dropless.
    num_shared_experts: int = 0  # Always-on experts of expert_dim each (one MLP of their total width).


def route(logits_TE, top_k: int, router: str):
    """(weights [T, k], experts [T, k], probabilities [T, E]) of each token's chosen experts."""
    probs_TE = jax.nn.softmax(logits_TE.astype(jnp.float32), axis=-1)
    top_logits_TK, experts_TK = jax.lax.top_k(logits_TE.astype(jnp.float32), top_k)
    if router == "topk_softmax":
        weights_TK = jax.nn.softmax(top_logits_TK, axis=-1)
    else:
        weights_TK = jnp.take_along_axis(probs_TE, experts_TK, axis=-1)
    return weights_TK, experts_TK, probs_TE


def load_balancing_loss(probs_TE, experts_TK, num_experts: int):
    """E * sum_k sum_e f_ke * P_e (transformers' Mixtral formula; top_k when balanced)."""
    fraction_KE = jnp.mean(jax.nn.one_hot(experts_TK, num_experts, dtype=jnp.float32), axis=0)
    return num_experts * jnp.sum(fraction_KE * jnp.mean(probs_TE, axis=0)[None])


def router_z_loss(logits_TE):
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits_TE.astype(jnp.float32), axis=-1)))


def expert_swiglu_dropless(x_TD, weights_TK, experts_TK, gate_EDF, up_EDF, down_EFD):
    """Every (token, expert) pair through its expert: pairs sorted by expert, grouped matmuls."""
    t, k = experts_TK.shape
    num_experts = gate_EDF.shape[0]
    flat_experts = experts_TK.reshape(-1)
    order = jnp.argsort(flat_experts, stable=True)
    tokens = order // k  # The token of each sorted pair.
    sizes = jnp.bincount(flat_experts, length=num_experts).astype(jnp.int32)
    grouped = ragged_swiglu if jax.default_backend() in ("gpu", "tpu") else block_swiglu
    y_PD = grouped(x_TD[tokens], sizes, gate_EDF, up_EDF, down_EFD)
    # In fp32, as in `from_buffers`: the sum over each token's k pairs and the weights' gradient.
    weighted_PD = y_PD.astype(jnp.float32) * weights_TK.reshape(-1)[order][:, None]
    y_TD = jnp.zeros((t, y_PD.shape[-1]), jnp.float32).at[tokens].add(weighted_PD)
    return y_TD.astype(y_PD.dtype), jnp.float32(0.0)


def ragged_swiglu(x_PD, sizes_E, gate_EDF, up_EDF, down_EFD):
    """Rows grouped by expert (group e: the next sizes_E[e] rows) through their experts, by
    `jax.lax.ragged_dot`: grouped-GEMM kernels on GPU and TPU."""
    h_PF = activate(nn.silu, jax.lax.ragged_dot(x_PD, gate_EDF, sizes_E), jax.lax.ragged_dot(x_PD, up_EDF, sizes_E))
    return jax.lax.ragged_dot(h_PF, down_EFD, sizes_E)


def block_size(pairs: int, num_experts: int) -> int:
    """Rows per block of `block_swiglu`: a power of two near a quarter of an expert's fair share,
    8 to 128 (bigger blocks multiply faster, and pad more)."""
    return int(min(128, max(8, 2 ** round(math.log2(max(1, pairs / (4 * num_experts)))))))


def block_swiglu(x_PD, sizes_E, gate_EDF, up_EDF, down_EFD):
    """`ragged_swiglu` as XLA:CPU runs well: XLA lowers ragged_dot there to a masked product
    over every group (num_experts times the FLOPs), so instead each group is padded to whole
    blocks of rows (MegaBlocks' block-sparse layout, Gale et al. 2022), each block multiplied by
    its expert's weights in one batched matmul. At most num_experts blocks are padding."""
    p, d = x_PD.shape
    num_experts = gate_EDF.shape[0]
    b = block_size(p, num_experts)
    blocks = -(-p // b) + num_experts  # A static bound on sum(ceil(size / b)).
    padded_E = -(-sizes_E // b) * b
    padded_start_E = jnp.cumsum(padded_E) - padded_E
    start_E = jnp.cumsum(sizes_E) - sizes_E
    expert_P = jnp.repeat(jnp.arange(num_experts), sizes_E, total_repeat_length=p)
    row_P = padded_start_E[expert_P] + jnp.arange(p) - start_E[expert_P]  # Each row's place among the blocks.
    x_NBD = jnp.zeros((blocks * b, d), x_PD.dtype).at[row_P].set(x_PD).reshape(blocks, b, d)
    # Each block's expert; blocks past the last group hold zeros (through any expert: zeros).
    expert_N = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded_E), jnp.arange(blocks) * b, side="right"),
                           num_experts - 1)
    y_NBD = expert_swiglu(x_NBD, gate_EDF[expert_N], up_EDF[expert_N], down_EFD[expert_N])
    return y_NBD.reshape(blocks * b, -1)[row_P]


def capacity(tokens: int, top_k: int, num_experts: int, factor: float) -> int:
    return max(1, math.ceil(factor * tokens * top_k / num_experts))


def buffer_slots(experts_TK, num_experts: int, c: int):
    """(slot [T, k], kept [T, k]) of one row's pairs in their experts' buffers of `c`, filled
    by choice rank then token; a pair over capacity gets the spare slot c."""
    t, k = experts_TK.shape
    one_hot_KTE = jax.nn.one_hot(experts_TK.T, num_experts, dtype=jnp.int32)  # Rank-major priority.
    slot_KTE = jnp.cumsum(one_hot_KTE.reshape(k * t, num_experts), axis=0).reshape(k, t, num_experts) - 1
    slot_TK = jnp.sum(slot_KTE * one_hot_KTE, axis=-1).T
    kept_TK = slot_TK < c
    return jnp.where(kept_TK, slot_TK, c), kept_TK


def to_buffers(x_TD, experts_TK, slot_TK, num_experts: int, c: int):
    """[E, c, D]: each kept pair's token in its expert's buffer (the spare slot is cut off)."""
    t, k = experts_TK.shape
    buffers_ECD = jnp.zeros((num_experts, c + 1, x_TD.shape[-1]), x_TD.dtype)
    buffers_ECD = buffers_ECD.at[experts_TK, slot_TK].set(jnp.broadcast_to(x_TD[:, None], (t, k, x_TD.shape[-1])))
    return buffers_ECD[:, :c]


def from_buffers(y_ECD, weights_TK, experts_TK, slot_TK, kept_TK):
    """[T, D]: each token's weighted sum of its kept pairs' expert outputs."""
    y_ECD = jnp.concatenate([y_ECD, jnp.zeros_like(y_ECD[:, :1])], axis=1)  # The spare slot: zeros.
    # In fp32: the sum over the k choices, and the weights' gradient (a sum over the model axis).
    y_TKD = y_ECD[experts_TK, slot_TK].astype(jnp.float32) * (weights_TK * kept_TK)[..., None]
    return jnp.sum(y_TKD, axis=1).astype(y_ECD.dtype)


def expert_swiglu(x_ECD, gate_EDF, up_EDF, down_EFD):
    """Each expert's SwiGLU on its buffer (any leading batch axes), one batched matmul each;
    also each block's, with its expert's weights gathered (`block_swiglu`)."""
    h_ECF = activate(nn.silu, jnp.einsum("...ecd,edf->...ecf", x_ECD, gate_EDF),
                     jnp.einsum("...ecd,edf->...ecf", x_ECD, up_EDF))
    return jnp.einsum("...ecf,efd->...ecd", h_ECF, down_EFD)


def expert_swiglu_rows(x_BTD, weights_BTK, experts_BTK, gate_EDF, up_EDF, down_EFD, c: int, exchange=None):
    """(output [B, T, D], kept [B, T, k]): every row's pairs into per-row expert buffers of `c`,
    through the experts, and back. `exchange` (expert parallelism, see `_expert_parallel`) is a
    pair of functions moving the [B, E, c, D] buffers to the experts' devices and back."""
    num_experts = gate_EDF.shape[0] * (1 if exchange is None else exchange.shards)
    slot_BTK, kept_BTK = jax.vmap(lambda e: buffer_slots(e, num_experts, c))(experts_BTK)
    x_BECD = jax.vmap(lambda x, e, s: to_buffers(x, e, s, num_experts, c))(x_BTD, experts_BTK, slot_BTK)
    if exchange is None:
        y_BECD = expert_swiglu(x_BECD, gate_EDF, up_EDF, down_EFD)
    else:
        y_BECD = exchange.back(expert_swiglu(exchange.out(x_BECD), gate_EDF, up_EDF, down_EFD))
    return jax.vmap(from_buffers)(y_BECD, weights_BTK, experts_BTK, slot_BTK, kept_BTK), kept_BTK


def expert_swiglu_capacity(x_TD, weights_TK, experts_TK, gate_EDF, up_EDF, down_EFD, factor: float):
    """(output [T, D], fraction of pairs dropped) of one row with a capacity of `factor`."""
    c = capacity(x_TD.shape[0], experts_TK.shape[1], gate_EDF.shape[0], factor)
    y_BTD, kept_BTK = expert_swiglu_rows(x_TD[None], weights_TK[None], experts_TK[None], gate_EDF, up_EDF, down_EFD, c)
    return y_BTD[0], 1.0 - jnp.mean(kept_BTK.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class _AllToAll:
    """Inside shard_map: a device's [B, E, c, D] buffers -> [shards * B, E / shards, c, D]
    (every device's tokens for this device's experts) and back, over the `expert` mesh axis;
    the tensor axis's partial sums of the down projection are added on the way back."""
    shards: int

    def out(self, x_BECD):
        return jax.lax.all_to_all(x_BECD, "expert", split_axis=1, concat_axis=0, tiled=True)

    def back(self, y_BECD):
        y_BECD = jax.lax.psum(y_BECD, "tensor")
        return jax.lax.all_to_all(y_BECD, "expert", split_axis=0, concat_axis=1, tiled=True)


BATCH_AXES = ("data", "fsdp", "expert")


def _expert_parallel(mesh):
    """The mesh's expert-axis size when the experts are split over it (else 1)."""
    return 1 if mesh.empty or "expert" not in mesh.axis_names else mesh.shape["expert"]


def expert_parallel_rows(x_BTD, weights_BTK, experts_BTK, gate_EDF, up_EDF, down_EFD, c: int, mesh):
    """`expert_swiglu_rows` with the experts split over the mesh's expert axis: each device
    fills buffers for its rows, all-to-all sends every expert's buffers to the device holding
    it, and the outputs come back the same way (GShard, Lepikhin et al. 2021)."""
    rows, weight = P(BATCH_AXES), P("expert", None, "tensor")  # Tokens, routing weights and choices by row.
    exchange = _AllToAll(mesh.shape["expert"])
    fn = functools.partial(expert_swiglu_rows, c=c, exchange=exchange)
    return jax.shard_map(fn, mesh=mesh, in_specs=(rows, rows, rows, weight, weight, P("expert", "tensor", None)),
                         out_specs=(rows, rows))(x_BTD, weights_BTK, experts_BTK, gate_EDF, up_EDF, down_EFD)


class MoeMlp(nn.Module):
    """The experts' MLP on [B, T, D]; returns (output, {"load_balancing_loss", "router_z_loss",
    "expert_fraction" [E], "dropped_fraction"})."""
    spec: object  # The family's spec: d_model, init scale, dtypes, num_layers (residual scale).
    shape: MoeShape

    @nn.compact
    def __call__(self, x_BTD):
        s, m = self.spec, self.shape
        d, f, e = s.d_model, m.expert_dim, m.num_experts
        b, t, _ = x_BTD.shape
        x_TD = x_BTD.reshape(b * t, d)
        logits_TE = Projection(s, (d, e), ("embed", "experts_router"), name="router")(x_TD).astype(jnp.float32)
        weights_TK, experts_TK, probs_TE = route(logits_TE, m.top_k, m.router)

        def experts(name, shape, axes, scale=1.0):
            return self.param(name, weight_init(s, axes, scale), shape, s.storage_dtype).astype(s.compute_dtype)
        residual = (2 * s.num_layers) ** -0.5
        gate = experts("gate", (e, d, f), ("experts", "embed", "mlp"))
        up = experts("up", (e, d, f), ("experts", "embed", "mlp"))
        down = experts("down", (e, f, d), ("experts", "mlp", "embed"), residual)
        x_TD = x_TD.astype(s.compute_dtype)
        mesh = jax.sharding.get_abstract_mesh()
        shards = _expert_parallel(mesh)
        parallel = shards > 1 and b % math.prod(mesh.shape[a] for a in BATCH_AXES) == 0
        if m.capacity_factor > 0 or parallel:
            # Dropless across devices: room for a whole row in every buffer (an expert gets at
            # most one pair per token), so nothing drops, at num_experts / top_k times the
            # expert FLOPs of grouped matmuls; capacity_factor is the efficient choice there.
            c = capacity(t, m.top_k, e, m.capacity_factor) if m.capacity_factor > 0 else t
            rows = (x_TD.reshape(b, t, d), weights_TK.reshape(b, t, -1), experts_TK.reshape(b, t, -1),
                    gate, up, down, c)
            y_BTD, kept = expert_parallel_rows(*rows, mesh) if parallel else expert_swiglu_rows(*rows)
            y_TD, dropped = y_BTD.reshape(b * t, d), 1.0 - jnp.mean(kept.astype(jnp.float32))
        else:
            y_TD, dropped = expert_swiglu_dropless(x_TD, weights_TK, experts_TK, gate, up, down)
        y_BTD = y_TD.reshape(b, t, d)
        if m.num_shared_experts:
            width = m.num_shared_experts * f
            h = activate(nn.silu, Projection(s, (d, width), ("embed", "mlp"), name="shared_gate")(x_BTD),
                         Projection(s, (d, width), ("embed", "mlp"), name="shared_up")(x_BTD))
            y_BTD = y_BTD + Projection(s, (width, d), ("mlp", "embed"), scale=residual, name="shared_down")(h)
        fraction_E = jnp.mean(jax.nn.one_hot(experts_TK, e, dtype=jnp.float32), axis=(0, 1))
        stats = {"load_balancing_loss": load_balancing_loss(probs_TE, experts_TK, e),
                 "router_z_loss": router_z_loss(logits_TE), "expert_fraction": fraction_E,
                 "dropped_fraction": dropped}
        return y_BTD, stats
