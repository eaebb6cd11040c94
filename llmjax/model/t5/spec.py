"""The T5 family's config.model fields and their checks."""

from __future__ import annotations

import dataclasses

from llmjax.errors import config_error
from llmjax.model.spec import TransformerSpec, divisible, finite, positive

# Relative position biases are added to the attention scores, which only the kernels that take
# an additive bias do: XLA's, the CPU blockwise kernel, and cuDNN's through
# jax.nn.dot_product_attention; TPU's splash kernel does not.
T5_ATTENTION_IMPLS = ("auto", "xla", "blockwise", "cudnn")
FEED_FORWARDS = ("gated-gelu", "relu")


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Spec(TransformerSpec):
    family: str = "t5"
    num_layers: int = 4  # Encoder blocks, and as many decoder blocks.
    num_heads: int = 4  # Attention heads (self- and cross-attention).
    head_dim: int = 64  # Width of one head (T5's d_kv); num_heads * head_dim need not be d_model.
    mlp_dim: int = 1024  # MLP hidden width (T5's d_ff).
    # The MLP (T5's feed_forward_proj): "gated-gelu" (T5 v1.1) or "relu" (the original T5).
    feed_forward: str = "gated-gelu"
    relative_buckets: int = 32  # Relative position buckets (T5's relative_attention_num_buckets).
    relative_max_distance: int = 128  # Distances from here on share the last bucket.
    norm_eps: float = 1e-6  # RMSNorm epsilon (T5's layer_norm_epsilon).
    # T5's "initializer factor": every weight's std is this times its fan-in^-0.5 (the token
    # embedding's is this times 1), as in Mesh TensorFlow and transformers' T5.
    init_scale: float = 1.0
    tie_embeddings: bool = True  # The decoder's output projection is the shared embedding.
    # Multiply the decoder's output by d_model^-0.5 before a tied output projection: the
    # original T5's way (its embedding has unit std). T5 v1.1 checkpoints, as transformers 5
    # runs them (tied), do not.
    rescale_output: bool = True

    @classmethod
    def validate(cls, model, mesh_shape) -> None:
        super().validate(model, mesh_shape)
        positive(model, "num_heads", "head_dim", "mlp_dim", "relative_buckets", "relative_max_distance")
        finite(model, "norm_eps", positive=True)
        if model.feed_forward not in FEED_FORWARDS:
            raise config_error("model.feed_forward", model.feed_forward,
                               f"must be one of {', '.join(FEED_FORWARDS)} (T5 v1.1's MLP, the original T5's).")
        if model.attention_impl not in T5_ATTENTION_IMPLS:
            raise config_error("model.attention_impl", model.attention_impl,
                               f"must be one of {', '.join(T5_ATTENTION_IMPLS)} for T5: its relative "
                               f"position bias is added to the scores, which the splash kernel does "
                               f"not take.")
        if model.relative_buckets < 4 or model.relative_buckets % 4:
            raise config_error("model.relative_buckets", model.relative_buckets,
                               "must be a multiple of 4 (half per direction in the encoder, half of "
                               "those exact offsets).")
        if model.relative_max_distance <= model.relative_buckets // 2:
            raise config_error("model.relative_max_distance", model.relative_max_distance,
                               f"must exceed the decoder's {model.relative_buckets // 2} exact offsets "
                               f"(model.relative_buckets // 2): the logarithmic buckets span the "
                               f"distances from there to it; raise it or lower relative_buckets.")
        if model.rescale_output and not model.tie_embeddings:
            raise config_error("model.rescale_output", True,
                               "applies to a tied output projection only; set it False or "
                               "model.tie_embeddings=True.")
        if mesh_shape:
            divisible(model, "num_heads", mesh_shape, "tensor")
            divisible(model, "mlp_dim", mesh_shape, "tensor")
