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


class Embed(nn.Embed):
    """nn.Embed that gathers rows from the stored (fp32) table and casts them after, not
    before: autodiff then scatter-adds the gradient into an fp32 table. Cast first, the
    gradient is a bf16 scatter-add, which XLA accumulates in bf16 (see llmjax/cpu_runtime.py):
    over ids seen ~1,000 times each, 2.9% off the fp32 sum. The forward values are the same
    either way."""

    def __call__(self, ids):
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)


def embedding(spec: ModelSpec, rows: int, axes: tuple[str, str], name: str) -> Embed:
    return Embed(rows, spec.d_model, dtype=spec.compute_dtype, param_dtype=spec.storage_dtype,
                 embedding_init=weight_init(spec, axes), name=name)


def output_matrix(module: nn.Module, spec: ModelSpec, embed: Embed):
    """[vocab, d_model]: the token embedding when tied, else a parameter "lm_head" of `module`."""
    if spec.tie_embeddings:
        return embed.embedding
    return module.param("lm_head", weight_init(spec, ("vocab", "embed")), (spec.vocab_size, spec.d_model),
                        spec.storage_dtype)
