"""T5 encoder-decoder (Raffel et al. 2020; the v1.1 gated-GELU MLP or the original's ReLU one): a
shared token embedding; an encoder of N pre-RMSNorm blocks (bidirectional self-attention, MLP); a decoder of
N blocks (causal self-attention, cross-attention over the encoder's output, MLP); a final
RMSNorm on each side; logits through the shared embedding (scaled by d_model^-0.5 first, as
the original T5) or an output matrix of their own.

Positions enter only as a learned bias on the attention scores, one per head and relative
position bucket (`relative_buckets`), a table per stack shared by its blocks: bidirectional
buckets in the encoder, causal ones in the decoder, none in cross-attention. Scores are not
divided by sqrt(head_dim): T5 folds that into the query's init. Nothing has a bias; the MLP is
wo(gelu_tanh(wi_0 x) * wi_1 x), or the original T5's wo(relu(wi x)). Packed examples are kept apart by segment ids on both sides,
in cross-attention too (a decoder token sees only its own example's inputs).

Parameter names follow transformers' T5ForConditionalGeneration where they can (q, k, v, o,
wi_0, wi_1 or wi, wo), so `hf.py` reads as a list of renames.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from llmjax.model.layers.activation import activate, gelu_tanh
from llmjax.model.layers.attention import HEADS_ACT, attention_kernel
from llmjax.model.layers.embedding import embedding, positions_or_default
from llmjax.model.layers.kv_cache import attend_to_cache, cache_attention
from llmjax.model.layers.norms import rms_norm
from llmjax.model.layers.output import head_output
from llmjax.model.layers.projection import Projection, project_together
from llmjax.model.layers.stack import stack_blocks
from llmjax.model.t5.spec import T5Spec

ENCODER_ACT = ("activation_batch", "activation_length", "activation_embed")
DECODER_ACT = ("activation_batch", "activation_decoder_length", "activation_embed")
CROSS_KV_ACT = ("activation_batch", "activation_kv_length", "activation_heads", "activation_head_dim")


def relative_bucket(relative_TS, bidirectional: bool, num_buckets: int, max_distance: int):
    """The bucket of each relative position (key position - query position): exact offsets up
    to num_buckets/4 (bidirectional) or /2 (causal), logarithmic bins beyond, the last bin from
    `max_distance` on; in the encoder, keys after the query have buckets of their own."""
    buckets = jnp.zeros_like(relative_TS)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_TS > 0) * num_buckets
        distance = jnp.abs(relative_TS)
    else:
        distance = -jnp.minimum(relative_TS, 0)  # Keys after the query are masked anyway.
    max_exact = num_buckets // 2
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / jnp.log(max_distance / max_exact)
    large = jnp.minimum(max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_TS.dtype),
                        num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, large)


def relative_bias(table_RN, query_T, key_S, spec: T5Spec, bidirectional: bool):
    """[1, N, T, S]: each head's learned bias for every (query, key) pair's bucket."""
    buckets_TS = relative_bucket(key_S[None, :] - query_T[:, None], bidirectional, spec.relative_buckets,
                                 spec.relative_max_distance)
    return jnp.transpose(jnp.asarray(table_RN)[buckets_TS], (2, 0, 1))[None]


def attention(module: nn.Module, spec: T5Spec, x_BTD, kv_BSD, attend, kv_axes=None):
    """Multi-head attention with T5's init: query std (d_model * head_dim)^-0.5 (the score
    scale folded in), key and value d_model^-0.5, output (heads * head_dim)^-0.5; called inside
    `module`'s compact method, whose parameters q, k, v and o these become. `attend(q, k, v)`
    runs the kernel with the bias and mask of this kind of attention."""
    d, n, h = spec.d_model, spec.num_heads, spec.head_dim
    q, k, v = (Projection(spec, (d, n, h), ("embed", "heads", "head_dim"), scale=scale, name=name)
               for name, scale in (("q", (d * h) ** -0.5), ("k", d ** -0.5), ("v", d ** -0.5)))
    if kv_BSD is x_BTD:  # Self-attention: a decode step projects all three in one product.
        q_BTNH, k_BSNH, v_BSNH = project_together(module, [q, k, v], x_BTD)
    else:
        q_BTNH, k_BSNH, v_BSNH = q(x_BTD), k(kv_BSD), v(kv_BSD)
    if kv_axes is not None:
        k_BSNH, v_BSNH = (nn.with_logical_constraint(x, kv_axes) for x in (k_BSNH, v_BSNH))
    out_BTNH = attend(q_BTNH, k_BSNH, v_BSNH)
    return Projection(spec, (n, h, d), ("heads", "head_dim", "embed"), in_ndim=2, scale=(n * h) ** -0.5,
                      name="o")(out_BTNH)


class SelfAttention(nn.Module):
    """Bidirectional (encoder) or causal (decoder) self-attention with the relative position
    bias of its stack's table. Decoding (the "cache" collection mutable), the keys and values
    are appended to a cache and the new queries, at positions `queries_T`, see all of it."""
    spec: T5Spec
    causal: bool

    @nn.compact
    def __call__(self, x_BTD, table_RN, segments_BT, queries_T):
        s = self.spec

        def attend(q_BTNH, k_BSNH, v_BSNH):
            if self.causal and self.is_mutable_collection("cache") and not self.is_initializing():
                k_BNSH, v_BNSH, mask_B1TS = attend_to_cache(self, k_BSNH, v_BSNH, segments_BT)
                bias = relative_bias(table_RN, queries_T, jnp.arange(k_BNSH.shape[2]), s, bidirectional=False)
                return cache_attention(q_BTNH, k_BNSH, v_BNSH, mask_B1TS, bias.astype(q_BTNH.dtype), scale=1.0)
            # Training: columns stand for positions (within a segment they differ alike).
            rows_T = keys_S = jnp.arange(x_BTD.shape[1])
            bias = relative_bias(table_RN, rows_T, keys_S, s, bidirectional=not self.causal)
            return attend_unscaled(s, q_BTNH, k_BSNH, v_BSNH, segments_BT, segments_BT, self.causal, bias)
        return attention(self, s, x_BTD, x_BTD, attend)


class CrossAttention(nn.Module):
    """The decoder's attention over the encoder's output: no position bias; a token sees the
    inputs of its own example (segment) only. Decoding, a step's one query goes through the
    cache's kernel, whose products XLA:CPU compiles in every setting (`cache_attention`)."""
    spec: T5Spec

    @nn.compact
    def __call__(self, x_BTD, encoded_BSD, segments_BT, encoded_segments_BS):
        s = self.spec

        def attend(q_BTNH, k_BSNH, v_BSNH):
            if self.is_mutable_collection("cache") and not self.is_initializing():
                mask_B1TS = (segments_BT[:, :, None] == encoded_segments_BS[:, None, :])[:, None]
                return cache_attention(q_BTNH, k_BSNH.swapaxes(1, 2), v_BSNH.swapaxes(1, 2), mask_B1TS, scale=1.0)
            return attend_unscaled(s, q_BTNH, k_BSNH, v_BSNH, segments_BT, encoded_segments_BS, False)
        return attention(self, s, x_BTD, encoded_BSD, attend, CROSS_KV_ACT)


class Mlp(nn.Module):
    """Gated GELU (T5 v1.1): wo(gelu_tanh(wi_0 x) * wi_1 x); ReLU (the original T5): wo(relu(wi x))."""
    spec: T5Spec

    @nn.compact
    def __call__(self, x_BTD):
        s = self.spec
        d, f = s.d_model, s.mlp_dim
        if s.feed_forward == "relu":
            h_BTF = nn.relu(Projection(s, (d, f), ("embed", "mlp"), scale=d ** -0.5, name="wi")(x_BTD))
        else:
            gate_BTF, up_BTF = project_together(self, [Projection(s, (d, f), ("embed", "mlp"), scale=d ** -0.5,
                                                                  name=name) for name in ("wi_0", "wi_1")], x_BTD)
            h_BTF = activate(gelu_tanh, gate_BTF, up_BTF)
        return Projection(s, (f, d), ("mlp", "embed"), scale=f ** -0.5, name="wo")(h_BTF)


class EncoderBlock(nn.Module):
    spec: T5Spec

    @nn.compact
    def __call__(self, x_BTD, table_RN, segments_BT):
        s = self.spec
        h_BTD = rms_norm(s, "attention_norm")(x_BTD)
        x_BTD = x_BTD + SelfAttention(s, causal=False, name="attention")(h_BTD, table_RN, segments_BT, None)
        x_BTD = x_BTD + Mlp(s, name="mlp")(rms_norm(s, "mlp_norm")(x_BTD))
        return nn.with_logical_constraint(x_BTD, ENCODER_ACT), None


class DecoderBlock(nn.Module):
    spec: T5Spec

    @nn.compact
    def __call__(self, x_BTD, table_RN, segments_BT, queries_T, encoded_BSD, encoded_segments_BS):
        s = self.spec
        h_BTD = rms_norm(s, "attention_norm")(x_BTD)
        x_BTD = x_BTD + SelfAttention(s, causal=True, name="attention")(h_BTD, table_RN, segments_BT, queries_T)
        h_BTD = rms_norm(s, "cross_attention_norm")(x_BTD)
        x_BTD = x_BTD + CrossAttention(s, name="cross_attention")(h_BTD, encoded_BSD, segments_BT,
                                                                  encoded_segments_BS)
        x_BTD = x_BTD + Mlp(s, name="mlp")(rms_norm(s, "mlp_norm")(x_BTD))
        return nn.with_logical_constraint(x_BTD, DECODER_ACT), None


def attend_unscaled(spec: T5Spec, q_BTNH, k_BSNH, v_BSNH, q_segments_BT, kv_segments_BS, causal: bool,
                    bias_1NTS=None):
    """The platform's attention kernel (blockwise on CPU, cuDNN on GPU, XLA's on TPU, where
    splash takes no bias) with T5's unscaled scores, document masks and optional bias."""
    out_BTNH = attention_kernel(q_BTNH, k_BSNH, v_BSNH, q_segments_BT, kv_segments_BS, spec.attention_impl,
                                causal, bias_1NTS=bias_1NTS, scale=1.0)
    return nn.with_logical_constraint(out_BTNH, HEADS_ACT)


class T5(nn.Module):
    spec: T5Spec

    def setup(self):
        s = self.spec
        self.embed = embedding(s, s.vocab_size, ("vocab", "embed"), "embed")
        bias_init = nn.with_logical_partitioning(nn.initializers.normal(s.init_scale * s.d_model ** -0.5),
                                                 ("relative_buckets", "heads"))
        self.encoder_bias = self.param("encoder_relative_bias", bias_init, (s.relative_buckets, s.num_heads),
                                       s.storage_dtype)
        self.decoder_bias = self.param("decoder_relative_bias", bias_init, (s.relative_buckets, s.num_heads),
                                       s.storage_dtype)
        self.encoder = Stack(s, EncoderBlock)
        self.decoder = Stack(s, DecoderBlock)
        if not s.tie_embeddings:
            init = nn.with_logical_partitioning(nn.initializers.normal(s.init_scale * s.d_model ** -0.5),
                                                ("vocab", "embed"))
            self.lm_head = self.param("lm_head", init, (s.vocab_size, s.d_model), s.storage_dtype)

    def __call__(self, inputs_BS, segments_BS, decoder_inputs_BT, decoder_segments_BT, with_head: bool = True):
        """fp32 logits [B, T, V] of the decoder's inputs given the encoder's; with
        `with_head=False`, (final hidden states, logits_fn). Segment ids may be None (one
        example per row)."""
        segments_BS = jnp.zeros_like(inputs_BS) if segments_BS is None else segments_BS
        decoder_segments_BT = (jnp.zeros_like(decoder_inputs_BT) if decoder_segments_BT is None
                               else decoder_segments_BT)
        encoded_BSD = self.encode(inputs_BS, segments_BS)
        return self.decode(encoded_BSD, segments_BS, decoder_inputs_BT, None, decoder_segments_BT, with_head)

    def encode(self, inputs_BS, segments_BS):
        """The encoder's final hidden states [B, S, D]."""
        x_BSD = nn.with_logical_constraint(self.embed(inputs_BS), ENCODER_ACT)
        return self.encoder(x_BSD, self.encoder_bias, segments_BS)

    def decode(self, encoded_BSD, segments_BS, tokens_BT, positions_BT, segments_BT, with_head: bool = True):
        """Decoder logits (or hidden states, see __call__). With the "cache" collection mutable
        the tokens are appended to each layer's key/value cache at `positions_BT` (the slots
        they fill, the same in every row) and attend to all of it."""
        s = self.spec
        queries_T = positions_or_default(tokens_BT, positions_BT)[0]
        x_BTD = nn.with_logical_constraint(self.embed(tokens_BT), DECODER_ACT)
        x_BTD = self.decoder(x_BTD, self.decoder_bias, segments_BT, queries_T, encoded_BSD, segments_BS)
        if s.tie_embeddings:
            if s.rescale_output:
                x_BTD = x_BTD * s.d_model ** -0.5
            return head_output(x_BTD, self.embed.embedding, s, with_head)
        return head_output(x_BTD, self.lm_head, s, with_head)


class Stack(nn.Module):
    """The blocks of one side and its final RMSNorm."""
    spec: T5Spec
    block: type

    @nn.compact
    def __call__(self, x, *block_args):
        x, _ = stack_blocks(self.block, self.spec, x, *block_args, name="layers")
        return rms_norm(self.spec, "final_norm")(x)


@dataclasses.dataclass(frozen=True)
class EncoderDecoderMath:
    """The pure functions of the T5 family. A batch holds the encoder's "inputs" and
    "segment_ids" and the decoder's "decoder_inputs" and "decoder_segment_ids" (see
    `llmjax/train/objectives/span.py`)."""

    def init(self, rng, config):
        """Parameters as a nested dict of `nn.LogicallyPartitioned` leaves (arrays + axis names)."""
        spec = T5Spec.from_config(config.model)
        tokens = jnp.zeros((1, min(8, spec.max_seq_len)), jnp.int32)
        return T5(spec).init(rng, tokens, None, tokens, None)["params"]

    def apply(self, params, batch, *, config, with_head: bool = True):
        """fp32 logits [B, T, V] at the decoder's positions; without the head, (its final
        hidden states, logits_fn)."""
        return T5(T5Spec.from_config(config.model)).apply(
            {"params": params}, batch["inputs"], batch.get("segment_ids"), batch["decoder_inputs"],
            batch.get("decoder_segment_ids"), with_head=with_head)

    def seq2seq(self, config):
        """(module, spec) for generation (`llmjax/sample/seq2seq.py`): the spec without
        rematerialisation, since inference keeps nothing for a backward pass."""
        return T5, T5Spec.from_config(config.model, remat="none")


MATH = EncoderDecoderMath()
