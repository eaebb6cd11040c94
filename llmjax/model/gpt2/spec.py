"""The GPT-2 family's config.model fields and their checks."""

from __future__ import annotations

import dataclasses

from llmjax.model.spec import TransformerSpec, check_heads, finite


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Spec(TransformerSpec):
    family: str = "gpt2"
    num_heads: int = 4  # Attention heads (keys and values have as many: no grouping).
    head_dim: int = 64  # Width of one head; d_model must equal num_heads * head_dim.
    mlp_dim: int = 1024  # GELU MLP hidden width (GPT-2: 4 x d_model).
    norm_eps: float = 1e-5  # LayerNorm epsilon.

    @classmethod
    def validate(cls, model, mesh_shape) -> None:
        super().validate(model, mesh_shape)
        check_heads(model, mesh_shape)
        finite(model, "norm_eps", positive=True)
