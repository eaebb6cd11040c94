"""Llama-architecture decoder: embed -> N x (pre-norm attention, pre-norm SwiGLU) -> norm -> logits.
With model.num_experts > 0, every moe_every-th SwiGLU is a mixture of experts (Mixtral).

Parameters are `nn.LogicallyPartitioned` boxes naming their logical axes (the rules table in
`llmjax.parallel.rules` turns those into shardings); `MATH` gives the family's pure `init`
and `apply` (`llmjax.model.layers.decoder`).
"""

from __future__ import annotations

import flax.linen as nn

from llmjax.model.layers.activation import activate
from llmjax.model.layers.attention import causal_attention
from llmjax.model.layers.decoder import DecoderMath
from llmjax.model.layers import moe_stats
from llmjax.model.layers.embedding import embedding, output_matrix, positions_or_default
from llmjax.model.layers.moe import MoeMlp, MoeShape
from llmjax.model.layers.norms import rms_norm
from llmjax.model.layers.output import head_output
from llmjax.model.layers.projection import Projection, project_together, residual_scale
from llmjax.model.layers.rope import apply_rope, rope_tables
from llmjax.model.layers.stack import stack_blocks
from llmjax.model.llama.spec import LlamaSpec

EMBED_ACT = ("activation_batch", "activation_length", "activation_embed")
MLP_ACT = ("activation_batch", "activation_length", "activation_mlp")


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE on queries and keys, no biases."""
    spec: LlamaSpec

    @nn.compact
    def __call__(self, x_BTD, rope, segment_ids_BT, prefix_BT=None):
        """`rope`: the (sin, cos) tables of `rope_tables` for the tokens' positions."""
        s = self.spec
        d, n, k, h = s.d_model, s.num_heads, s.num_kv_heads, s.head_dim
        q_BTNH, k_BTKH, v_BTKH = project_together(self, [
            Projection(s, (d, n, h), ("embed", "heads", "head_dim"), name="query"),
            Projection(s, (d, k, h), ("embed", "kv_heads", "head_dim"), name="key"),
            Projection(s, (d, k, h), ("embed", "kv_heads", "head_dim"), name="value")], x_BTD)
        out_BTNH = causal_attention(self, apply_rope(q_BTNH, rope), apply_rope(k_BTKH, rope), v_BTKH,
                                    segment_ids_BT, s.attention_impl, prefix_BT)
        return Projection(s, (n, h, d), ("heads", "head_dim", "embed"), in_ndim=2,
                          scale=residual_scale(s), name="out")(out_BTNH)


class Mlp(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x))."""
    spec: LlamaSpec

    @nn.compact
    def __call__(self, x_BTD):
        s = self.spec
        d, f = s.d_model, s.mlp_dim
        gate_BTF, up_BTF = project_together(self, [Projection(s, (d, f), ("embed", "mlp"), name=name)
                                                   for name in ("gate", "up")], x_BTD)
        h_BTF = nn.with_logical_constraint(activate(nn.silu, gate_BTF, up_BTF), MLP_ACT)
        return Projection(s, (f, d), ("mlp", "embed"), scale=residual_scale(s), name="down")(h_BTF)


def moe_shape(s: LlamaSpec) -> MoeShape:
    return MoeShape(num_experts=s.num_experts, top_k=s.experts_per_token, expert_dim=s.expert_mlp_dim or s.mlp_dim,
                    router=s.router, capacity_factor=s.capacity_factor, num_shared_experts=s.shared_experts)


class Block(nn.Module):
    """One layer; with `moe`, its MLP is a mixture of experts and it returns their statistics."""
    spec: LlamaSpec
    moe: bool = False

    @nn.compact
    def __call__(self, x_BTD, rope, segment_ids_BT, prefix_BT=None):
        s = self.spec
        h_BTD = rms_norm(s, "attention_norm")(x_BTD)
        x_BTD = x_BTD + Attention(s, name="attention")(h_BTD, rope, segment_ids_BT, prefix_BT)
        h_BTD = rms_norm(s, "mlp_norm")(x_BTD)
        if self.moe:
            y_BTD, stats = MoeMlp(s, moe_shape(s), name="mlp")(h_BTD)
        else:
            y_BTD, stats = Mlp(s, name="mlp")(h_BTD), None
        return nn.with_logical_constraint(x_BTD + y_BTD, EMBED_ACT), stats


class MoeGroup(nn.Module):
    """moe_every layers, the last with MoE: the scanned unit of a model that interleaves them."""
    spec: LlamaSpec

    @nn.compact
    def __call__(self, x_BTD, *args):
        for i in range(self.spec.moe_every - 1):
            x_BTD, _ = Block(self.spec, name=f"dense_{i}")(x_BTD, *args)
        return Block(self.spec, moe=True, name="moe")(x_BTD, *args)


class Transformer(nn.Module):
    spec: LlamaSpec

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, segment_ids_BT, with_head: bool = True, prefix_BT=None):
        """fp32 logits; with `with_head=False`, (final hidden states, logits_fn). `prefix_BT`
        (prefix LM) marks the tokens every query of their document attends to."""
        s = self.spec
        positions_BT = positions_or_default(tokens_BT, positions_BT)
        embed = embedding(s, s.vocab_size, ("vocab", "embed"), "embed")
        x_BTD = nn.with_logical_constraint(embed(tokens_BT), EMBED_ACT)
        rope = rope_tables(positions_BT, s.head_dim, s.rope_theta)
        if not s.num_experts:
            x_BTD, _ = stack_blocks(Block, s, x_BTD, rope, segment_ids_BT, prefix_BT)
        elif s.moe_every == 1:
            x_BTD, stats = stack_blocks(Block, s, x_BTD, rope, segment_ids_BT, prefix_BT, moe=True)
            moe_stats.record(stats)
        else:
            x_BTD, stats = stack_blocks(MoeGroup, s, x_BTD, rope, segment_ids_BT, prefix_BT,
                                        length=s.num_layers // s.moe_every)
            moe_stats.record(stats)
        x_BTD = rms_norm(s, "final_norm")(x_BTD)
        return head_output(x_BTD, output_matrix(self, s, embed), s, with_head)


MATH = DecoderMath(Transformer, LlamaSpec)
