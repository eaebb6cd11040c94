"""GPT-2 decoder: token + position embeddings -> N x (pre-LayerNorm attention, pre-LayerNorm
GELU MLP) -> LayerNorm -> logits through the tied embedding. Every projection has a bias.

The query/key/value projection is one fused kernel [d_model, 3, heads, head_dim], the layout of
Hugging Face's `c_attn` (a Conv1D, [in, out]), so checkpoints convert by reshaping alone.
"""

from __future__ import annotations

import flax.linen as nn

from llmjax.model.gpt2.spec import GPT2Spec
from llmjax.model.layers.activation import activate, gelu_tanh
from llmjax.model.layers.attention import causal_attention
from llmjax.model.layers.decoder import DecoderMath
from llmjax.model.layers.embedding import embedding, output_matrix, positions_or_default
from llmjax.model.layers.norms import layer_norm
from llmjax.model.layers.output import head_output
from llmjax.model.layers.projection import Projection, residual_scale
from llmjax.model.layers.stack import stack_blocks

EMBED_ACT = ("activation_batch", "activation_length", "activation_embed")
MLP_ACT = ("activation_batch", "activation_length", "activation_mlp")


class Attention(nn.Module):
    spec: GPT2Spec

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT, prefix_BT=None):
        s = self.spec
        d, n, h = s.d_model, s.num_heads, s.head_dim
        qkv_BT3NH = Projection(s, (d, 3, n, h), ("embed", "qkv", "heads", "head_dim"), use_bias=True,
                               name="qkv")(x_BTD)
        q_BTNH, k_BTNH, v_BTNH = (qkv_BT3NH[:, :, i] for i in range(3))
        out_BTNH = causal_attention(self, q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, s.attention_impl, prefix_BT)
        return Projection(s, (n, h, d), ("heads", "head_dim", "embed"), in_ndim=2, use_bias=True,
                          scale=residual_scale(s), name="out")(out_BTNH)


class Mlp(nn.Module):
    """fc -> GELU (tanh approximation, GPT-2's "gelu_new") -> proj."""
    spec: GPT2Spec

    @nn.compact
    def __call__(self, x_BTD):
        s = self.spec
        d, f = s.d_model, s.mlp_dim
        h_BTF = Projection(s, (d, f), ("embed", "mlp"), use_bias=True, name="fc")(x_BTD)
        h_BTF = nn.with_logical_constraint(activate(gelu_tanh, h_BTF), MLP_ACT)
        return Projection(s, (f, d), ("mlp", "embed"), use_bias=True, scale=residual_scale(s),
                          name="proj")(h_BTF)


class Block(nn.Module):
    spec: GPT2Spec

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT, prefix_BT=None):
        s = self.spec
        x_BTD = x_BTD + Attention(s, name="attention")(layer_norm(s, "attention_norm")(x_BTD), segment_ids_BT,
                                                       prefix_BT)
        x_BTD = x_BTD + Mlp(s, name="mlp")(layer_norm(s, "mlp_norm")(x_BTD))
        return nn.with_logical_constraint(x_BTD, EMBED_ACT), None


class GPT2(nn.Module):
    spec: GPT2Spec

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, segment_ids_BT, with_head: bool = True, prefix_BT=None):
        """fp32 logits; with `with_head=False`, (final hidden states, logits_fn). Positions are
        per document (packed rows restart them), as the learned table is indexed. `prefix_BT`
        (prefix LM) marks the tokens every query of their document attends to."""
        s = self.spec
        positions_BT = positions_or_default(tokens_BT, positions_BT)
        embed = embedding(s, s.vocab_size, ("vocab", "embed"), "embed")
        position_embed = embedding(s, s.max_seq_len, ("position", "embed"), "position_embed")
        x_BTD = nn.with_logical_constraint(embed(tokens_BT) + position_embed(positions_BT), EMBED_ACT)
        x_BTD, _ = stack_blocks(Block, s, x_BTD, segment_ids_BT, prefix_BT)
        x_BTD = layer_norm(s, "final_norm")(x_BTD)
        return head_output(x_BTD, output_matrix(self, s, embed), s, with_head)


MATH = DecoderMath(GPT2, GPT2Spec)
