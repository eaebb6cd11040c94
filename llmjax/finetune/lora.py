"""LoRA (Hu et al. 2021): a frozen kernel W is used as W + (alpha / r) A B, with A [in, r] and
B [r, out] trained, B starting at zero so the adapted model starts as the pretrained one.

The update is merged into the kernel on every forward pass rather than added beside each
matmul: the model code stays as it is for every family, and the extra work (r x in x out per
kernel) is small next to a batch's matmuls. A kernel's input dimensions are those before its
output ones: a kernel reading the residual stream starts with the `embed` axis (queries, MLP
up-projections), one writing it ends with `embed` (attention and MLP outputs), which is also
how Hugging Face's [out, in] matrices split them (what PEFT export relies on).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from llmjax.errors import ConfigError
from llmjax.finetune import lora_targets


def input_dims(axes: tuple) -> int | None:
    """How many leading (non-layer) axes of a kernel are its input; None if it neither reads
    nor writes the residual stream."""
    body = [a for a in axes if a != "layers"]
    if len(body) >= 2 and body[0] == "embed":
        return 1
    if len(body) >= 2 and body[-1] == "embed":
        return len(body) - 1
    return None


def targets(boxed_params, config) -> dict[tuple, tuple]:
    """{path of the module (without "kernel"): (layer dims, in dims, out dims)} of every
    kernel LoRA adapts; refuses a target name that matches no kernel."""
    names = set(lora_targets(config))
    found, seen = {}, set()
    flat = traverse_util.flatten_dict(boxed_params)
    for path, leaf in flat.items():
        if path[-1] != "kernel" or path[-2] not in names:
            continue
        axes = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else (None,) * leaf.ndim
        shape = (leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf).shape
        n_in = input_dims(tuple(axes))
        if n_in is None:
            raise ConfigError(f"config.finetune.lora_targets: {'/'.join(path[:-1])} (axes {axes}) neither "
                              f"reads nor writes the model's embedding; adapt attention or MLP projections.")
        lead = sum(1 for a in axes if a == "layers")
        found[path[:-1]] = (shape[:lead], shape[lead:lead + n_in], shape[lead + n_in:])
        seen.add(path[-2])
    missing = names - seen
    if missing:
        kernels = sorted({p[-2] for p in flat if p[-1] == "kernel"})
        raise ConfigError(f"config.finetune.lora_targets={','.join(lora_targets(config))!r}: no kernel named "
                          f"{', '.join(sorted(missing))} in this model; its projections are {', '.join(kernels)}.")
    return found


def init(rng, boxed_params, config) -> dict:
    """The adapters of every target, as a tree mirroring the model's ({..."query": {"a", "b"}}),
    replicated (they are small)."""
    rank, adapters = config.finetune.lora_rank, {}
    for k, (path, (lead, n_in, n_out)) in enumerate(sorted(targets(boxed_params, config).items())):
        fan_in, fan_out = math.prod(n_in), math.prod(n_out)
        axes = ("layers",) * len(lead) + (None, None)
        a = jax.random.normal(jax.random.fold_in(rng, k), (*lead, fan_in, rank), jnp.float32) / math.sqrt(fan_in)
        adapters[path + ("a",)] = nn.LogicallyPartitioned(a, axes)
        adapters[path + ("b",)] = nn.LogicallyPartitioned(jnp.zeros((*lead, rank, fan_out), jnp.float32), axes)
    return traverse_util.unflatten_dict(adapters)


def delta(a, b, kernel_shape, scale: float):
    """(alpha / r) A B in the kernel's own shape."""
    return (scale * jnp.einsum("...ir,...ro->...io", a, b)).reshape(kernel_shape)


def merge(model_params: dict, adapters: dict, config) -> dict:
    """The model's parameters with every adapter's update added to its kernel."""
    scale = config.finetune.lora_alpha / config.finetune.lora_rank
    flat = traverse_util.flatten_dict(model_params)
    for path, pair in traverse_util.flatten_dict(adapters, is_leaf=lambda _, x: "a" in x and "b" in x).items():
        kernel = flat[path + ("kernel",)]
        flat[path + ("kernel",)] = kernel + delta(pair["a"], pair["b"], kernel.shape, scale).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat)
