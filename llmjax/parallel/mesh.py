"""Builds the device mesh from config; its shape is validated by `llmjax.config.mesh_shapes`."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType

from llmjax.config import MESH_AXES, mesh_shapes


def build_mesh(config, devices=None) -> jax.sharding.Mesh:
    """A mesh with axes (data, fsdp, expert, sequence, tensor). With dcn sizes above 1 it is a hybrid
    mesh: each axis's dcn part spans hosts (processes) and its ici part stays within one, so
    the chatty axes (tensor, fsdp) never cross the slow network. Axes are Auto so XLA
    propagates shardings from the rules-table constraints."""
    devices = jax.devices() if devices is None else list(devices)
    ici, dcn = mesh_shapes(config, len(devices), jax.process_count())
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if any(size > 1 for size in dcn.values()):
        grid = mesh_utils.create_hybrid_device_mesh(
            [ici[a] for a in MESH_AXES], [dcn[a] for a in MESH_AXES], devices,
            process_is_granule=True)
        return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)
    sizes = tuple(ici[a] for a in MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(sizes, MESH_AXES, axis_types=axis_types)
    return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=axis_types)
