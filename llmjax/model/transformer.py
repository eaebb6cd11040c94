"""Llama-architecture decoder: embed -> N x (pre-norm attention, pre-norm SwiGLU) -> norm -> logits.

The public surface is two pure functions. `init(rng, config)` returns parameters whose leaves
are `nn.LogicallyPartitioned` boxes naming their logical axes (the rules table in
`llmjax.parallel.rules` turns those into shardings); `apply(params, tokens, ...)` accepts boxed
or plain arrays and returns fp32 logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.model.attention import Attention
from llmjax.model.layers import Projection, residual_scale, rms_norm, weight_init
from llmjax.model.rope import rope_tables
from llmjax.model.spec import ModelSpec
from llmjax.parallel.rules import AXIS_RULES

EMBED_ACT = ("activation_batch", "activation_length", "activation_embed")
MLP_ACT = ("activation_batch", "activation_length", "activation_mlp")
LOGITS_ACT = ("activation_batch", "activation_length", "activation_vocab")

REMAT_POLICIES = {
    "full": None,  # Save nothing: recompute the whole block in the backward pass.
    "save_dots": jax.checkpoint_policies.checkpoint_dots,
    "save_dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Mlp(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x))."""
    spec: ModelSpec

    @nn.compact
    def __call__(self, x_BTD):
        s = self.spec
        d, f = s.d_model, s.mlp_dim
        gate_BTF = Projection(s, (d, f), ("embed", "mlp"), name="gate")(x_BTD)
        up_BTF = Projection(s, (d, f), ("embed", "mlp"), name="up")(x_BTD)
        h_BTF = nn.with_logical_constraint(nn.silu(gate_BTF) * up_BTF, MLP_ACT)
        return Projection(s, (f, d), ("mlp", "embed"), scale=residual_scale(s), name="down")(h_BTF)


class Block(nn.Module):
    spec: ModelSpec

    @nn.compact
    def __call__(self, x_BTD, rope, segment_ids_BT):
        s = self.spec
        h_BTD = rms_norm(s, "attention_norm")(x_BTD)
        x_BTD = x_BTD + Attention(s, name="attention")(h_BTD, rope, segment_ids_BT)
        h_BTD = rms_norm(s, "mlp_norm")(x_BTD)
        x_BTD = x_BTD + Mlp(s, name="mlp")(h_BTD)
        return nn.with_logical_constraint(x_BTD, EMBED_ACT), None


class Transformer(nn.Module):
    spec: ModelSpec

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, segment_ids_BT, with_head: bool = True):
        """fp32 logits; with `with_head=False`, (final hidden states, output projection [vocab,
        d_model]) instead, so a loss can project a few positions at a time."""
        s = self.spec
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
        embed = nn.Embed(s.vocab_size, s.d_model, dtype=s.compute_dtype, param_dtype=s.storage_dtype,
                         embedding_init=weight_init(s, ("vocab", "embed")), name="embed")
        x_BTD = nn.with_logical_constraint(embed(tokens_BT), EMBED_ACT)
        rope = rope_tables(positions_BT, s.head_dim, s.rope_theta)

        block = Block
        if s.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[s.remat], prevent_cse=not s.scan_layers)
        if s.scan_layers:
            stack = nn.scan(block, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True},
                            in_axes=(nn.broadcast, nn.broadcast), length=s.num_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x_BTD, _ = stack(s, name="layers")(x_BTD, rope, segment_ids_BT)
        else:
            for i in range(s.num_layers):
                x_BTD, _ = block(s, name=f"layers_{i}")(x_BTD, rope, segment_ids_BT)

        x_BTD = rms_norm(s, "final_norm")(x_BTD)
        if s.tie_embeddings:
            w_VD = embed.embedding
        else:
            w_VD = self.param("lm_head", weight_init(s, ("vocab", "embed")),
                              (s.vocab_size, s.d_model), s.storage_dtype)
        if not with_head:
            return x_BTD, w_VD
        return output_logits(x_BTD, w_VD, s)


def output_logits(x_BTD, w_VD, spec: ModelSpec):
    """The output projection as one 2-D matmul over flattened tokens (see `Projection` for
    why), returned in fp32. Accumulated in fp32 and kept so with `spec.fp32_logits`; else
    rounded to the compute dtype on the way out, as bf16 autocast does (the loss is still
    fp32): on XLA:CPU the fp32-output product and its gradients take a slower path, and the
    output projection with the loss runs ~1.7x faster in bf16 at bench36m (scripts/benchmark.py
    --variant fp32:model.fp32_logits=True)."""
    b, t, d = x_BTD.shape
    out_dtype = jnp.float32 if spec.fp32_logits else spec.compute_dtype
    logits_BTV = jnp.dot(x_BTD.reshape(b * t, d).astype(spec.compute_dtype),
                         jnp.asarray(w_VD, spec.compute_dtype).T,
                         preferred_element_type=out_dtype).reshape(b, t, w_VD.shape[0])
    return nn.with_logical_constraint(logits_BTV.astype(jnp.float32), LOGITS_ACT)


def init(rng, config):
    """Parameters as a nested dict of `nn.LogicallyPartitioned` leaves (arrays + axis names)."""
    spec = ModelSpec.from_config(config.model)
    tokens = jnp.zeros((1, min(8, spec.max_seq_len)), jnp.int32)
    with nn.logical_axis_rules(AXIS_RULES):
        return Transformer(spec).init(rng, tokens, None, None)["params"]


def apply(params, tokens_BT, positions_BT=None, segment_ids_BT=None, *, config):
    """Logits [batch, length, vocab] in fp32. Positions default to 0..T-1; segment ids, when
    given, stop attention between different documents packed into one row."""
    spec = ModelSpec.from_config(config.model)
    with nn.logical_axis_rules(AXIS_RULES):
        return Transformer(spec).apply({"params": params}, tokens_BT, positions_BT, segment_ids_BT)


def apply_hidden(params, tokens_BT, positions_BT=None, segment_ids_BT=None, *, config):
    """(final hidden states [batch, length, d_model], logits_fn): `logits_fn(h_BCD)` gives the
    fp32 logits of any slice of the hidden states, so a loss need never hold all of them."""
    spec = ModelSpec.from_config(config.model)
    with nn.logical_axis_rules(AXIS_RULES):
        x_BTD, w_VD = Transformer(spec).apply({"params": params}, tokens_BT, positions_BT,
                                              segment_ids_BT, with_head=False)

    def logits_fn(h_BCD):
        with nn.logical_axis_rules(AXIS_RULES):
            return output_logits(h_BCD, w_VD, spec)

    return x_BTD, logits_fn
