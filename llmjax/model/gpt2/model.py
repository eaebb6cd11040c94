"""GPT-2 decoder: token + position embeddings -> N x (pre-LayerNorm attention, pre-LayerNorm
GELU MLP) -> LayerNorm -> logits through the tied embedding. Every projection has a bias.

The query/key/value projection is one fused kernel [d_model, 3, heads, head_dim], the layout of
Hugging Face's `c_attn` (a Conv1D, [in, out]), so checkpoints convert by reshaping alone.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from llmjax.model.gpt2.spec import GPT2Spec
from llmjax.model.layers.attention import causal_attention
from llmjax.model.layers.decoder import DecoderMath
from llmjax.model.layers.norms import layer_norm
from llmjax.model.layers.output import head_output
from llmjax.model.layers.projection import Projection, residual_scale, weight_init
from llmjax.model.layers.stack import stack_blocks

EMBED_ACT = ("activation_batch", "activation_length", "activation_embed")
MLP_ACT = ("activation_batch", "activation_length", "activation_mlp")


class Attention(nn.Module):
    spec: GPT2Spec

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT):
        s = self.spec
        d, n, h = s.d_model, s.num_heads, s.head_dim
        qkv_BT3NH = Projection(s, (d, 3, n, h), ("embed", "qkv", "heads", "head_dim"), use_bias=True,
                               name="qkv")(x_BTD)
        q_BTNH, k_BTNH, v_BTNH = (qkv_BT3NH[:, :, i] for i in range(3))
        out_BTNH = causal_attention(self, q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, s.attention_impl)
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
        h_BTF = nn.with_logical_constraint(nn.gelu(h_BTF, approximate=True), MLP_ACT)
        return Projection(s, (f, d), ("mlp", "embed"), use_bias=True, scale=residual_scale(s),
                          name="proj")(h_BTF)


class Block(nn.Module):
    spec: GPT2Spec

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT):
        s = self.spec
        x_BTD = x_BTD + Attention(s, name="attention")(layer_norm(s, "attention_norm")(x_BTD), segment_ids_BT)
        x_BTD = x_BTD + Mlp(s, name="mlp")(layer_norm(s, "mlp_norm")(x_BTD))
        return nn.with_logical_constraint(x_BTD, EMBED_ACT), None


class GPT2(nn.Module):
    spec: GPT2Spec

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, segment_ids_BT, with_head: bool = True):
        """fp32 logits; with `with_head=False`, (final hidden states, logits_fn). Positions are
        per document (packed rows restart them), as the learned table is indexed."""
        s = self.spec
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
        embed = nn.Embed(s.vocab_size, s.d_model, dtype=s.compute_dtype, param_dtype=s.storage_dtype,
                         embedding_init=weight_init(s, ("vocab", "embed")), name="embed")
        position_embed = nn.Embed(s.max_seq_len, s.d_model, dtype=s.compute_dtype,
                                  param_dtype=s.storage_dtype,
                                  embedding_init=weight_init(s, ("position", "embed")),
                                  name="position_embed")
        x_BTD = embed(tokens_BT) + position_embed(positions_BT)
        x_BTD = nn.with_logical_constraint(x_BTD, EMBED_ACT)
        x_BTD = stack_blocks(Block, s, x_BTD, segment_ids_BT)
        x_BTD = layer_norm(s, "final_norm")(x_BTD)
        if s.tie_embeddings:
            w_VD = embed.embedding
        else:
            w_VD = self.param("lm_head", weight_init(s, ("vocab", "embed")),
                              (s.vocab_size, s.d_model), s.storage_dtype)
        return head_output(x_BTD, w_VD, s, with_head)


MATH = DecoderMath(GPT2, GPT2Spec)
