"""Normalisation layers, with their scales (and biases) named on the logical axis "norm"."""

from __future__ import annotations

import flax.linen as nn

from llmjax.model.spec import ModelSpec

_NORM_AXES = ("norm",)


def rms_norm(spec: ModelSpec, name: str) -> nn.RMSNorm:
    """RMSNorm (Zhang & Sennrich 2019): Llama and T5."""
    return nn.RMSNorm(epsilon=spec.norm_eps, dtype=spec.compute_dtype, param_dtype=spec.storage_dtype,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, _NORM_AXES),
                      name=name)


def layer_norm(spec: ModelSpec, name: str) -> nn.LayerNorm:
    """LayerNorm with scale and bias (Ba et al. 2016): GPT-2 and BERT."""
    return nn.LayerNorm(epsilon=spec.norm_eps, dtype=spec.compute_dtype,
                        param_dtype=spec.storage_dtype,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, _NORM_AXES),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, _NORM_AXES),
                        name=name)
