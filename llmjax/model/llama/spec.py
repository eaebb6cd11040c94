"""The Llama family's config.model fields and their checks."""

from __future__ import annotations

import dataclasses

from llmjax.errors import config_error
from llmjax.model.spec import TransformerSpec, divisible, finite, positive

ROUTERS = ("topk_softmax", "softmax_topk")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaSpec(TransformerSpec):
    family: str = "llama"
    num_heads: int = 4  # Query heads.
    num_kv_heads: int = 2  # Key/value heads (grouped-query attention); divides num_heads.
    head_dim: int = 64  # Width of one attention head; num_heads * head_dim need not be d_model (Mistral-Nemo).
    mlp_dim: int = 768  # SwiGLU hidden width.
    rope_theta: float = 10_000.0  # RoPE base; larger values stretch the longest wavelength.
    norm_eps: float = 1e-5  # RMSNorm epsilon.
    # Mixture of experts (Mixtral, DeepSeekMoE; llmjax/model/layers/moe.py). 0 experts: every
    # MLP dense. Otherwise every moe_every-th layer's MLP (layers moe_every-1, 2*moe_every-1, ...)
    # is num_experts SwiGLU experts of expert_mlp_dim, of which each token uses experts_per_token.
    num_experts: int = 0
    experts_per_token: int = 2  # Top-k.
    moe_every: int = 1  # 1: every layer (Mixtral); 2: every other layer (Switch, GShard).
    expert_mlp_dim: int = 0  # Each expert's hidden width; 0: mlp_dim.
    shared_experts: int = 0  # Always-on experts of expert_mlp_dim each (DeepSeekMoE).
    router: str = "topk_softmax"  # topk_softmax (Mixtral: renormalised) | softmax_topk (Switch, DeepSeek).
    # Per row, each expert takes at most capacity_factor * length * experts_per_token /
    # num_experts tokens and drops the rest; 0: dropless (grouped matmuls, no token dropped).
    capacity_factor: float = 0.0
    load_balancing_weight: float = 0.01  # Coefficient of the load-balancing loss (Switch: 0.01).
    router_z_weight: float = 0.001  # Coefficient of the router z-loss (ST-MoE: 0.001).

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
        if model.head_dim % 2:
            raise config_error("model.head_dim", model.head_dim,
                               "must be even (RoPE rotates pairs of channels).")
        if mesh_shape:
            divisible(model, "num_kv_heads", mesh_shape, "tensor")
            divisible(model, "mlp_dim", mesh_shape, "tensor")
        validate_moe(model, mesh_shape)


def validate_moe(model, mesh_shape) -> None:
    if not isinstance(model.num_experts, int) or model.num_experts < 0:
        raise config_error("model.num_experts", model.num_experts, "must be 0 (dense) or a positive integer.")
    if not model.num_experts:  # A dense model uses a mesh's expert axis as data parallelism.
        return
    positive(model, "experts_per_token", "moe_every")
    for key in ("expert_mlp_dim", "shared_experts"):
        if not isinstance(model[key], int) or model[key] < 0:
            raise config_error(f"model.{key}", model[key], "must be a non-negative integer.")
    finite(model, "capacity_factor", "load_balancing_weight", "router_z_weight")
    for key in ("capacity_factor", "load_balancing_weight", "router_z_weight"):
        if model[key] < 0:
            raise config_error(f"model.{key}", model[key], "must be >= 0.")
    if model.experts_per_token > model.num_experts:
        raise config_error("model.experts_per_token", model.experts_per_token,
                           f"must be at most model.num_experts={model.num_experts}.")
    if model.router not in ROUTERS:
        raise config_error("model.router", model.router, f"must be one of {', '.join(ROUTERS)}.")
    if model.num_layers % model.moe_every:
        raise config_error("model.moe_every", model.moe_every,
                           f"must divide model.num_layers={model.num_layers} (the scanned unit is "
                           f"moe_every layers, the last of them MoE).")
    if mesh_shape:
        divisible(model, "num_experts", mesh_shape, "expert")
        divisible(model, "expert_mlp_dim" if model.expert_mlp_dim else "mlp_dim", mesh_shape, "tensor")
        if mesh_shape.get("sequence", 1) > 1:
            raise config_error("mesh.ici.sequence", mesh_shape["sequence"],
                               "MoE layers route and dispatch whole rows; with model.num_experts > 0 "
                               "keep the sequence axis at 1 and split the batch (data, fsdp, expert).")
