"""Builds the device mesh from config; the shape is validated by `llmjax.config.mesh_shape`."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType

from llmjax.config import MESH_AXES, mesh_shape


def build_mesh(config, devices=None) -> jax.sharding.Mesh:
    """A mesh with axes (data, fsdp, tensor). Axes are Auto so XLA propagates shardings from
    the rules-table constraints (the explicit-sharding mode would force every op to agree)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(config, len(devices))
    sizes = tuple(shape[axis] for axis in MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(sizes))
    grid = np.asarray(devices).reshape(sizes)
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(sizes))
