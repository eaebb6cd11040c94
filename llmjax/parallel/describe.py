"""A table of where every parameter lives: what `llmjax-train --print_sharding` prints."""

from __future__ import annotations

import math

import jax


def param_name(path) -> str:
    """"layers/attention/query/kernel": a parameter's path in the params tree, as printed."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def shard_bytes(leaf) -> int:
    """Bytes one device holds of a sharded (abstract) array: its largest shard."""
    return math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize


def sharding_table(logical_axes, params) -> str:
    """One row per parameter: shape, logical axes, mesh sharding, bytes on each device.
    `params` are abstract arrays (ShapeDtypeStructs) carrying their NamedShardings."""
    rows = [f"{'parameter':44} {'shape':20} {'logical axes':44} {'mesh sharding':28} {'bytes/device':>14}"]
    total = 0
    flat_axes = dict(jax.tree_util.tree_leaves_with_path(
        logical_axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = param_name(path)
        per_device = shard_bytes(leaf)
        total += per_device
        rows.append(f"{name:44} {str(tuple(leaf.shape)):20} {str(tuple(flat_axes[path])):44} "
                    f"{str(tuple(leaf.sharding.spec)):28} {per_device:>14,}")
    rows.append(f"{'total params per device':139} {total:>14,}")
    return "\n".join(rows)
