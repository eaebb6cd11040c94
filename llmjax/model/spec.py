"""A frozen, typed copy of `config.model`, so Flax modules can hash it and read attributes."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    max_seq_len: int
    rope_theta: float
    norm_eps: float
    init_scale: float
    dtype: str
    param_dtype: str
    tie_embeddings: bool
    scan_layers: bool
    remat: str
    attention_impl: str
    fp32_logits: bool = True  # Absent from configs saved before it existed.

    @classmethod
    def from_config(cls, model_config) -> "ModelSpec":
        values = dict(model_config)
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self):
        return jnp.dtype(self.param_dtype)
