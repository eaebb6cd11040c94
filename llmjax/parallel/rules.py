"""The single table that decides where every parameter and activation axis lives on the mesh.

Model code names logical axes only ("embed", "heads", "activation_batch", ...). Changing a
parallelism strategy means editing this table, never the model. An axis mapped to a tuple of
mesh axes is split over their product; None means replicated.
"""

from __future__ import annotations

import flax.linen as nn
import jax

AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Parameters.
    ("vocab", "tensor"),
    # Rules are tried in order and a mesh axis is used once per array: an MoE layer's expert
    # weights take the expert axis for their experts, so their embed falls through to fsdp;
    # every other weight's embed is split over fsdp and expert (ZeRO-3 over both).
    ("experts", "expert"),  # The expert index of an MoE layer's stacked expert weights.
    ("embed", ("fsdp", "expert")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("qkv", None),  # The query/key/value index of a fused projection (GPT-2).
    ("position", None),  # Rows of a learned position table (GPT-2, BERT).
    ("token_type", None),  # Rows of BERT's token-type table.
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    ("gates", None),  # Input/forget/cell/output index of an LSTM's gate kernels.
    ("lstm_in", "fsdp"),  # An LSTM layer's input or output width after the first layer.
    ("lstm_hidden", None),  # LSTM hidden units: the recurrence needs them whole at every step.
    ("relative_buckets", None),  # Rows of T5's relative position bias tables.
    ("experts_router", None),  # The router's output (one logit per expert): small, replicated.
    # Activations.
    ("activation_batch", ("data", "fsdp", "expert")),  # Outside MoE layers the expert axis is data parallel.
    ("activation_length", "sequence"),  # Tokens of a decoder, an encoder (T5's inputs) ...
    ("activation_decoder_length", "sequence"),  # ... and an encoder-decoder's decoder (its targets).
    ("activation_kv_length", None),  # Cross-attention's keys: every query shard reads all of them.
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def logical_to_sharding(logical_specs, mesh: jax.sharding.Mesh):
    """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, AXIS_RULES)

