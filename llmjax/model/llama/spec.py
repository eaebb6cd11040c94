"""The Llama family's config.model fields and their checks."""

from __future__ import annotations

import dataclasses

from llmjax.errors import config_error
from llmjax.model.spec import TransformerSpec, divisible, finite, positive


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaSpec(TransformerSpec):
    family: str = "llama"
    num_heads: int = 4  # Query heads.
    num_kv_heads: int = 2  # Key/value heads (grouped-query attention); divides num_heads.
    head_dim: int = 64  # Width of one attention head; d_model must equal num_heads * head_dim.
    mlp_dim: int = 768  # SwiGLU hidden width.
    rope_theta: float = 10_000.0  # RoPE base; larger values stretch the longest wavelength.
    norm_eps: float = 1e-5  # RMSNorm epsilon.

    @classmethod
    def validate(cls, model, mesh_shape) -> None:
        super().validate(model, mesh_shape)
        positive(model, "num_heads", "num_kv_heads", "head_dim", "mlp_dim")
        finite(model, "rope_theta", "norm_eps", positive=True)
        if model.num_heads % model.num_kv_heads:
            raise config_error("model.num_kv_heads", model.num_kv_heads,
                               f"must divide model.num_heads={model.num_heads} (grouped-query "
                               f"attention shares each key/value head among "
                               f"num_heads/num_kv_heads query heads).")
        if model.d_model != model.num_heads * model.head_dim:
            raise config_error("model.d_model", model.d_model,
                               f"must equal model.num_heads * model.head_dim = {model.num_heads} * "
                               f"{model.head_dim} = {model.num_heads * model.head_dim}; change one "
                               f"of the three.")
        if model.head_dim % 2:
            raise config_error("model.head_dim", model.head_dim,
                               "must be even (RoPE rotates pairs of channels).")
        if mesh_shape:
            divisible(model, "num_kv_heads", mesh_shape, "tensor")
            divisible(model, "mlp_dim", mesh_shape, "tensor")
