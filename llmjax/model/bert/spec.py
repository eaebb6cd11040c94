"""The BERT family's config.model fields and their checks."""

from __future__ import annotations

import dataclasses

from llmjax.errors import config_error
from llmjax.model.spec import TransformerSpec, check_heads, finite


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertSpec(TransformerSpec):
    family: str = "bert"
    num_heads: int = 4  # Attention heads (keys and values have as many: no grouping).
    head_dim: int = 64  # Width of one head; d_model must equal num_heads * head_dim.
    mlp_dim: int = 1024  # GELU MLP hidden width (BERT: 4 x d_model).
    norm_eps: float = 1e-12  # LayerNorm epsilon (BERT's).
    # Rows of the token-type (segment A/B) embedding; 0: none. Pretraining on plain text uses
    # type 0 everywhere; fine-tuning on sentence pairs uses 1 for the second.
    type_vocab_size: int = 2

    @classmethod
    def validate(cls, model, mesh_shape) -> None:
        super().validate(model, mesh_shape)
        check_heads(model, mesh_shape)
        finite(model, "norm_eps", positive=True)
        if not isinstance(model.type_vocab_size, int) or model.type_vocab_size < 0:
            raise config_error("model.type_vocab_size", model.type_vocab_size,
                               "must be 0 (no token types) or a positive integer.")
