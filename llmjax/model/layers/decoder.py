"""The pure functions of a decoder-only family, from its Flax module and spec: what the
registry's `Family.math()` returns for Llama and GPT-2 (and any family whose module is called
as `Module(spec)(tokens, positions, segment_ids, with_head=...)`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DecoderMath:
    module: type  # An nn.Module taking (tokens_BT, positions_BT, segment_ids_BT, with_head).
    spec: type  # Its ModelSpec subclass.

    def init(self, rng, config):
        """Parameters as a nested dict of `nn.LogicallyPartitioned` leaves (arrays + axis names)."""
        spec = self.spec.from_config(config.model)
        tokens = jnp.zeros((1, min(8, spec.max_seq_len)), jnp.int32)
        return self.module(spec).init(rng, tokens, None, None)["params"]

    def apply(self, params, batch, *, config, with_head: bool = True):
        """fp32 logits [B, T, V] of batch["inputs"] (positions, segment ids and a prefix LM's
        "prefix" optional); without the head, (final hidden states, logits_fn), see
        `layers.output.head_output`."""
        spec = self.spec.from_config(config.model)
        prefix = {"prefix_BT": batch["prefix"]} if "prefix" in batch else {}  # Prefix LM only.
        return self.module(spec).apply({"params": params}, batch["inputs"], batch.get("positions"),
                                       batch.get("segment_ids"), with_head=with_head, **prefix)

    def decoder(self, config):
        """(module, spec) for cached decoding: the spec without rematerialisation, since
        inference keeps nothing for a backward pass, and MoE layers dropless (a prompt's
        tokens must not compete for capacity with each other; Mixtral decodes dropless)."""
        return self.module, self.spec.from_config(config.model, remat="none", capacity_factor=0.0)
