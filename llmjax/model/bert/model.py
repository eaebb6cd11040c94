"""BERT encoder: token + position (+ token type) embeddings -> LayerNorm -> N x post-LayerNorm
blocks (x = LN(x + attention(x)); x = LN(x + MLP(x))) -> the MLM head (dense, GELU, LayerNorm)
-> logits through the tied embedding plus an output bias. Attention is bidirectional within a
segment, so packed documents never see one another. Every projection has a bias; the MLP's
GELU is the exact (erf) one, as BERT's "gelu".

Query, key and value are three kernels [d_model, heads, head_dim], Hugging Face's `query`,
`key` and `value` Linear layers with their heads split out; residual projections keep the
default init (post-LN normalises the stream, so nothing needs scaling down with depth).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from llmjax.model.bert.spec import BertSpec
from llmjax.model.layers.activation import activate, gelu_exact
from llmjax.model.layers.attention import bidirectional_attention
from llmjax.model.layers.embedding import embedding, output_matrix, positions_or_default
from llmjax.model.layers.norms import layer_norm
from llmjax.model.layers.output import head_output
from llmjax.model.layers.projection import Projection
from llmjax.model.layers.stack import stack_blocks

EMBED_ACT = ("activation_batch", "activation_length", "activation_embed")
MLP_ACT = ("activation_batch", "activation_length", "activation_mlp")


class Attention(nn.Module):
    spec: BertSpec

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT):
        s = self.spec
        d, n, h = s.d_model, s.num_heads, s.head_dim
        q_BTNH, k_BTNH, v_BTNH = (
            Projection(s, (d, n, h), ("embed", "heads", "head_dim"), use_bias=True, name=name)(x_BTD)
            for name in ("query", "key", "value"))
        out_BTNH = bidirectional_attention(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, s.attention_impl)
        return Projection(s, (n, h, d), ("heads", "head_dim", "embed"), in_ndim=2, use_bias=True,
                          name="out")(out_BTNH)


class Mlp(nn.Module):
    """fc -> GELU (exact) -> proj."""
    spec: BertSpec

    @nn.compact
    def __call__(self, x_BTD):
        s = self.spec
        h_BTF = Projection(s, (s.d_model, s.mlp_dim), ("embed", "mlp"), use_bias=True, name="fc")(x_BTD)
        h_BTF = nn.with_logical_constraint(activate(gelu_exact, h_BTF), MLP_ACT)
        return Projection(s, (s.mlp_dim, s.d_model), ("mlp", "embed"), use_bias=True, name="proj")(h_BTF)


class Block(nn.Module):
    spec: BertSpec

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT):
        s = self.spec
        x_BTD = layer_norm(s, "attention_norm")(x_BTD + Attention(s, name="attention")(x_BTD, segment_ids_BT))
        x_BTD = layer_norm(s, "mlp_norm")(x_BTD + Mlp(s, name="mlp")(x_BTD))
        return nn.with_logical_constraint(x_BTD, EMBED_ACT), None


class Bert(nn.Module):
    spec: BertSpec

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, segment_ids_BT, token_types_BT=None, with_head: bool = True):
        """fp32 MLM logits at every position; with `with_head=False`, (the head's hidden
        states, logits_fn). Positions are per document (packed rows restart them)."""
        s = self.spec
        positions_BT = positions_or_default(tokens_BT, positions_BT)
        embed = embedding(s, s.vocab_size, ("vocab", "embed"), "embed")
        x_BTD = embed(tokens_BT) + embedding(s, s.max_seq_len, ("position", "embed"), "position_embed")(positions_BT)
        if s.type_vocab_size:
            types_BT = jnp.zeros_like(tokens_BT) if token_types_BT is None else token_types_BT
            x_BTD = x_BTD + embedding(s, s.type_vocab_size, ("token_type", "embed"), "type_embed")(types_BT)
        x_BTD = nn.with_logical_constraint(layer_norm(s, "embed_norm")(x_BTD), EMBED_ACT)
        x_BTD, _ = stack_blocks(Block, s, x_BTD, segment_ids_BT)
        h_BTD = Projection(s, (s.d_model, s.d_model), ("embed", "mlp"), use_bias=True, name="head")(x_BTD)
        h_BTD = layer_norm(s, "head_norm")(activate(gelu_exact, h_BTD))
        bias_V = self.param("output_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                            (s.vocab_size,), s.storage_dtype)
        return head_output(h_BTD, output_matrix(self, s, embed), s, with_head, bias_V)


@dataclasses.dataclass(frozen=True)
class EncoderMath:
    """The pure functions of the BERT family (an encoder: no cached decoding)."""

    def init(self, rng, config):
        """Parameters as a nested dict of `nn.LogicallyPartitioned` leaves (arrays + axis names)."""
        spec = BertSpec.from_config(config.model)
        tokens = jnp.zeros((1, min(8, spec.max_seq_len)), jnp.int32)
        return Bert(spec).init(rng, tokens, None, None)["params"]

    def apply(self, params, batch, *, config, with_head: bool = True):
        """fp32 logits [B, T, V] of batch["inputs"] (positions, segment ids and token types
        optional); without the head, (its hidden states, logits_fn)."""
        return Bert(BertSpec.from_config(config.model)).apply(
            {"params": params}, batch["inputs"], batch.get("positions"), batch.get("segment_ids"),
            batch.get("token_types"), with_head=with_head)


MATH = EncoderMath()
