"""LSTM language model: token embedding -> N stacked LSTM layers -> output layer (the tied
embedding, or its own matrix, plus a bias).

Each layer computes the four gate pre-activations of its whole input sequence as one matmul
[B*T, in] x [in, 4H] before the recurrence, so only the recurrent product h @ W_hh [out, 4H] is
left inside the `jax.lax.scan` over time. Gates are in torch.nn.LSTM's order (input, forget,
cell, output). The cell state and the gate arithmetic are fp32 whatever the compute dtype:
a bf16 cell state would round away the small updates it accumulates over hundreds of steps.

Packed rows: where the segment id changes between two positions the state is reset to zero,
so a document never sees the one before it, as attention's segment mask does. The same reset
makes generation's left padding (segment 0) invisible to the prompt after it.

Generation keeps the state of every layer in Flax's "cache" collection (`recurrent_h`,
`recurrent_c` and the segment id of the last position, `recurrent_segment`), where a
transformer keeps its keys and values: a call with that collection mutable starts from the
stored state and stores the state it ends in. Training never passes it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.model.layers.decoder import DecoderMath
from llmjax.model.layers.embedding import embedding
from llmjax.model.layers.output import head_output
from llmjax.model.layers.projection import Projection, weight_init
from llmjax.model.lstm.spec import LSTMSpec

EMBED_ACT = ("activation_batch", "activation_length", "activation_embed")
GATES_ACT = ("activation_batch", "activation_length", None, None)
STATE_ACT = ("activation_batch", None)
REPLICATED = (None, None, None)


def fan_in_scale(spec: LSTMSpec, fan_in: int) -> float:
    """The factor on `init_scale` that gives a kernel std 1/sqrt(fan_in) (torch.nn.LSTM's
    uniform(-1/sqrt(H), 1/sqrt(H)) keeps the same scale): gate pre-activations start near unit
    variance, so the gates start away from 0.5 and the cell learns in the first steps (at a
    transformer's 0.02 a small LSTM barely moves in a hundred)."""
    return fan_in ** -0.5 / spec.init_scale


class LSTMLayer(nn.Module):
    spec: LSTMSpec
    in_axis: str  # Logical name of the input width: "embed" for the first layer, "lstm_in" after.

    @nn.compact
    def __call__(self, x_BTI, segment_ids_BT):
        s = self.spec
        hidden, out = s.hidden_dim, s.out_dim
        inputs = x_BTI.shape[-1]
        gates_BT4H = Projection(s, (inputs, 4, hidden), (self.in_axis, "gates", "lstm_hidden"),
                                scale=fan_in_scale(s, inputs), name="input")(x_BTI)

        def forget_bias(key, shape, dtype):
            return jnp.zeros(shape, dtype).at[1].set(s.forget_bias)

        bias_4H = self.param("bias", nn.with_logical_partitioning(forget_bias, ("gates", "lstm_hidden")),
                             (4, hidden), s.storage_dtype)
        gates_BT4H = nn.with_logical_constraint(gates_BT4H.astype(jnp.float32) + bias_4H, GATES_ACT)
        # The recurrent weights whole on every device: the loop reads them at every time step,
        # so an fsdp-sharded copy would be gathered T times instead of once.
        w_hh = nn.with_logical_constraint(
            self.param("recurrent", weight_init(s, ("lstm_in", "gates", "lstm_hidden"), fan_in_scale(s, out)),
                       (out, 4, hidden),
                       s.storage_dtype), REPLICATED).astype(s.compute_dtype).reshape(out, 4 * hidden)
        w_proj = None
        if s.proj_dim:
            w_proj = self.param("projection", weight_init(s, ("lstm_hidden", "lstm_in"), fan_in_scale(s, hidden)),
                                (hidden, out),
                                s.storage_dtype)
            w_proj = nn.with_logical_constraint(w_proj, REPLICATED[:2]).astype(s.compute_dtype)

        batch = x_BTI.shape[0]
        state = self._cached_state(batch)

        def step(carry, inputs):
            h_BO, c_BH, previous_B = carry
            g_B4H, segment_B = inputs
            keep_B1 = (segment_B == previous_B)[:, None]
            h_BO, c_BH = jnp.where(keep_B1, h_BO, 0.0), jnp.where(keep_B1, c_BH, 0.0)
            g_B4H = g_B4H + jnp.dot(h_BO.astype(s.compute_dtype), w_hh,
                                    preferred_element_type=jnp.float32).reshape(batch, 4, hidden)
            i, f, g, o = (g_B4H[:, k] for k in range(4))
            c_BH = jax.nn.sigmoid(f) * c_BH + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_BH = jax.nn.sigmoid(o) * jnp.tanh(c_BH)
            if w_proj is not None:
                h_BH = jnp.dot(h_BH.astype(s.compute_dtype), w_proj, preferred_element_type=jnp.float32)
            h_BO = nn.with_logical_constraint(h_BH, STATE_ACT)
            return (h_BO, c_BH, segment_B), h_BO.astype(s.compute_dtype)

        carry = tuple(v.value for v in state) if state else (
            jnp.zeros((batch, out), jnp.float32), jnp.zeros((batch, hidden), jnp.float32),
            jnp.zeros((batch,), jnp.int32))
        carry, h_TBO = jax.lax.scan(step, carry, (gates_BT4H.swapaxes(0, 1), segment_ids_BT.T),
                                    unroll=min(s.scan_unroll, x_BTI.shape[1]))
        if state:
            for variable, value in zip(state, carry):
                variable.value = value
        return nn.with_logical_constraint(h_TBO.swapaxes(0, 1), EMBED_ACT)

    def _cached_state(self, batch: int):
        """The cached (h, c, last segment id) when decoding (the "cache" collection is
        mutable), else None."""
        if not self.is_mutable_collection("cache"):
            return None
        s = self.spec
        return (self.variable("cache", "recurrent_h", jnp.zeros, (batch, s.out_dim), jnp.float32),
                self.variable("cache", "recurrent_c", jnp.zeros, (batch, s.hidden_dim), jnp.float32),
                self.variable("cache", "recurrent_segment", jnp.zeros, (batch,), jnp.int32))


class LSTM(nn.Module):
    spec: LSTMSpec

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, segment_ids_BT, with_head: bool = True):
        """fp32 logits; with `with_head=False`, (top layer's outputs, logits_fn). Positions are
        not used: the recurrence knows where it is."""
        del positions_BT
        s = self.spec
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones_like(tokens_BT)
        embed = embedding(s, s.vocab_size, ("vocab", "embed"), "embed")
        # Rows enter the first layer at unit variance (torch.nn.Embedding's N(0, 1) init) while the
        # tied output reads them at init_scale: at std 0.02 the gates see almost no input, and a
        # 2-layer lstm-5m stays at the unigram loss (a token-to-token map: unlearned in 200 steps
        # at std 0.02, learned at unit variance).
        x_BTD = nn.with_logical_constraint(embed(tokens_BT) * (1.0 / s.init_scale), EMBED_ACT)
        for layer in range(s.num_layers):
            x_BTD = LSTMLayer(s, "embed" if layer == 0 else "lstm_in", name=f"layers_{layer}")(x_BTD, segment_ids_BT)
        if s.tie_embeddings:
            w_VO = embed.embedding
        else:
            w_VO = self.param("lm_head", weight_init(s, ("vocab", "lstm_in")), (s.vocab_size, s.out_dim),
                              s.storage_dtype)
        # The output layer's bias learns the unigram distribution. Without it the layers must hold
        # a constant h to express it, saturating the gates that context would use: lstm-5m then
        # stays at the unigram loss for 200+ steps (val 6.84 at step 100; 5.37 with the bias).
        bias_V = self.param("output_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                            (s.vocab_size,), s.storage_dtype)
        return head_output(x_BTD, w_VO, s, with_head, bias_V)


MATH = DecoderMath(LSTM, LSTMSpec)
