"""A table of where every parameter lives: what `llmjax-train --print_sharding` prints."""

from __future__ import annotations

import math

import jax


def sharding_table(logical_axes, params) -> str:
    """One row per parameter: shape, logical axes, mesh sharding, bytes on each device.
    `params` are abstract arrays (ShapeDtypeStructs) carrying their NamedShardings."""
    rows = [f"{'parameter':44} {'shape':20} {'logical axes':44} {'mesh sharding':28} {'bytes/device':>14}"]
    total = 0
    flat_axes = dict(jax.tree_util.tree_leaves_with_path(
        logical_axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        per_device = math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        total += per_device
        rows.append(f"{name:44} {str(tuple(leaf.shape)):20} {str(tuple(flat_axes[path])):44} "
                    f"{str(tuple(leaf.sharding.spec)):28} {per_device:>14,}")
    rows.append(f"{'total params per device':139} {total:>14,}")
    return "\n".join(rows)
