"""Token embeddings and the output matrix they may share, as every decoder family has them."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from llmjax.model.layers.projection import weight_init
from llmjax.model.spec import ModelSpec


def positions_or_default(tokens_BT, positions_BT):
    """The given positions, or 0..T-1 in every row."""
    if positions_BT is not None:
        return positions_BT
    return jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)


def embedding(spec: ModelSpec, rows: int, axes: tuple[str, str], name: str) -> nn.Embed:
    return nn.Embed(rows, spec.d_model, dtype=spec.compute_dtype, param_dtype=spec.storage_dtype,
                    embedding_init=weight_init(spec, axes), name=name)


def output_matrix(module: nn.Module, spec: ModelSpec, embed: nn.Embed):
    """[vocab, d_model]: the token embedding when tied, else a parameter "lm_head" of `module`."""
    if spec.tie_embeddings:
        return embed.embedding
    return module.param("lm_head", weight_init(spec, ("vocab", "embed")), (spec.vocab_size, spec.d_model),
                        spec.storage_dtype)
