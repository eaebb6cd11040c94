"""The model section of a config, typed: the fields every family shares, their defaults and
meaning, and the checks that hold for any family. Each family subclasses `ModelSpec` with its
own fields (`llmjax/model/<family>/spec.py`); `config.model` holds exactly the fields of its
family, so a key that belongs to another family is refused with that family named.

Specs are frozen dataclasses, so Flax modules can hold them and jitted code can take them as
static arguments. This module imports no JAX: configs are built and checked before JAX starts.
"""

from __future__ import annotations

import dataclasses
import math

from llmjax.errors import config_error

DTYPES = ("float32", "bfloat16")
# Rematerialisation policy name -> the jax.checkpoint_policies attribute it uses (None: save
# nothing, recompute the whole block).
REMAT_POLICIES = {"none": None, "full": None, "save_dots": "checkpoint_dots",
                  "save_dots_no_batch": "checkpoint_dots_with_no_batch_dims"}
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "blockwise")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    family: str = "llama"  # Which model family (llmjax/model/registry.py); selects the other fields.
    vocab_size: int = 8192  # Embedding rows; the tokenizer is trained to exactly this size.
    d_model: int = 256  # Residual stream (or embedding) width.
    num_layers: int = 4  # Blocks.
    max_seq_len: int = 256  # Longest sequence the model is trained or evaluated on.
    init_scale: float = 0.02  # Std of normal weight init; residual outputs get 1/sqrt(2*num_layers) more.
    dtype: str = "bfloat16"  # Compute dtype of matmuls and activations (float32 or bfloat16).
    param_dtype: str = "float32"  # Storage dtype of parameters and optimizer state.
    tie_embeddings: bool = True  # Output projection reuses the token embedding.
    # Output projection's logits kept in fp32; False rounds them to `dtype` (bf16 autocast's
    # way; faster on CPU). The loss is fp32 either way.
    fp32_logits: bool = True

    @classmethod
    def defaults(cls) -> dict:
        """The config.model section of this family: every field with its default."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def from_config(cls, model_config, **changes) -> "ModelSpec":
        values = dict(model_config) | changes
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    @classmethod
    def validate(cls, model, mesh_shape: dict[str, int] | None) -> None:
        """Raises ConfigError naming the first field that cannot work; `mesh_shape` (axis ->
        size) is None when no mesh is known yet."""
        positive(model, "vocab_size", "d_model", "num_layers", "max_seq_len")
        finite(model, "init_scale", positive=True)
        for key in ("dtype", "param_dtype"):
            if model[key] not in DTYPES:
                raise config_error(f"model.{key}", model[key], f"must be one of {', '.join(DTYPES)}.")
        if mesh_shape:
            divisible(model, "vocab_size", mesh_shape, "tensor")
            if model.d_model % (mesh_shape["fsdp"] * mesh_shape.get("expert", 1)):
                raise config_error("model.d_model", model.d_model,
                                   f"must be divisible by fsdp x expert = {mesh_shape['fsdp']} x "
                                   f"{mesh_shape.get('expert', 1)} (weights split their embed axis over both).")

    @property
    def compute_dtype(self):
        import jax.numpy as jnp  # noqa: PLC0415 - the spec itself is read before JAX starts.

        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self):
        import jax.numpy as jnp  # noqa: PLC0415

        return jnp.dtype(self.param_dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerSpec(ModelSpec):
    """What stacks of attention blocks share: how the layers are stacked and attention run."""
    scan_layers: bool = True  # Blocks' params stacked on a "layers" axis and applied by jax.lax.scan.
    # Blocks per compiled loop iteration of that scan. A loop compiles one block whatever the
    # depth, but its backward pass reads every saved activation from buffers stacked over
    # layers, which the forward pass fills with copies (7% of a bench36m step on a 2-core CPU,
    # see the README). 0 = auto: stacks of up to 16 blocks run as one iteration (no loop, no
    # copies; compile time grows with depth), deeper ones one block per iteration.
    scan_unroll: int = 0
    remat: str = "none"  # Rematerialisation: none | full | save_dots | save_dots_no_batch.
    attention_impl: str = "auto"  # auto (cuDNN on GPU, splash on TPU, blockwise on CPU) | xla | cudnn | splash | blockwise.

    @classmethod
    def validate(cls, model, mesh_shape) -> None:
        super().validate(model, mesh_shape)
        if model.remat not in REMAT_POLICIES:
            raise config_error("model.remat", model.remat, f"must be one of {', '.join(REMAT_POLICIES)}.")
        if model.scan_unroll < 0:
            raise config_error("model.scan_unroll", model.scan_unroll,
                               "must be 0 (auto: no loop up to 16 blocks) or a positive count of blocks per loop iteration.")
        if model.attention_impl not in ATTENTION_IMPLS:
            raise config_error("model.attention_impl", model.attention_impl,
                               f"must be one of {', '.join(ATTENTION_IMPLS)}.")


def check_heads(model, mesh_shape) -> None:
    """The attention and MLP widths of a family with num_heads heads of head_dim filling
    d_model (GPT-2, BERT): positive, consistent, and split evenly by the tensor axis."""
    positive(model, "num_heads", "head_dim", "mlp_dim")
    if model.d_model != model.num_heads * model.head_dim:
        raise config_error("model.d_model", model.d_model,
                           f"must equal model.num_heads * model.head_dim = {model.num_heads} * "
                           f"{model.head_dim} = {model.num_heads * model.head_dim}; change one "
                           f"of the three.")
    if mesh_shape:
        divisible(model, "num_heads", mesh_shape, "tensor")
        divisible(model, "mlp_dim", mesh_shape, "tensor")


def positive(model, *keys: str) -> None:
    for key in keys:
        value = model[key]
        if not isinstance(value, int) or value < 1:
            raise config_error(f"model.{key}", value, "must be a positive integer.")


def finite(model, *keys: str, positive: bool = False) -> None:
    """Real-valued fields: finite numbers (NaN or infinity would reach the weights), with
    `positive` also above 0."""
    for key in keys:
        value = model[key]
        if not (isinstance(value, (int, float)) and math.isfinite(value) and (value > 0 or not positive)):
            raise config_error(f"model.{key}", value, f"must be a {'positive ' if positive else ''}finite number.")


def divisible(model, key: str, mesh_shape: dict[str, int], axis: str) -> None:
    """A dimension sharded over mesh axis `axis` must split evenly over it."""
    if model[key] % mesh_shape[axis]:
        raise config_error(f"model.{key}", model[key], f"must be divisible by its mesh axis size "
                                                       f"{mesh_shape[axis]} ({axis}).")
