"""N identical blocks: scanned (one compiled body, compile time flat in depth) or unrolled, and
rematerialised by the named policy of `config.model.remat`."""

from __future__ import annotations

import flax.linen as nn
import jax

from llmjax.model.spec import REMAT_POLICIES, TransformerSpec


def remat_policy(name: str):
    attribute = REMAT_POLICIES[name]
    return None if attribute is None else getattr(jax.checkpoint_policies, attribute)


AUTO_UNROLL_MAX = 16  # Deepest stack that `model.scan_unroll=0` compiles without a loop.


def scan_unroll(spec: TransformerSpec, length: int) -> int:
    """Blocks per loop iteration for a scan over `length` blocks (see `spec.scan_unroll`)."""
    return spec.scan_unroll or (length if length <= AUTO_UNROLL_MAX else 1)


def stack_blocks(block: type[nn.Module], spec: TransformerSpec, x, *broadcast_args, name="layers",
                 length: int | None = None, **fields):
    """Applies `length` (default `spec.num_layers`) copies of `block(spec, **fields)` to `x`;
    every block is called as `block(x, *broadcast_args) -> (x, y)`. Returns (x, the blocks' y
    stacked on a leading axis, e.g. an MoE layer's routing statistics; None when they are
    None). Scanned, the params of all blocks are stacked on a leading "layers" axis under
    `name`; unrolled, they are `name_0`, `name_1`, ..."""
    length = spec.num_layers if length is None else length
    if spec.remat != "none":
        block = nn.remat(block, policy=remat_policy(spec.remat), prevent_cse=not spec.scan_layers)
    if spec.scan_layers:
        scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True},
                          in_axes=(nn.broadcast,) * len(broadcast_args), length=length,
                          metadata_params={nn.PARTITION_NAME: "layers"}, unroll=scan_unroll(spec, length))
        return scanned(spec, **fields, name=name)(x, *broadcast_args)
    ys = []
    for i in range(length):
        x, y = block(spec, **fields, name=f"{name}_{i}")(x, *broadcast_args)
        ys.append(y)
    return x, None if ys[0] is None else jax.tree.map(lambda *y: jax.numpy.stack(y), *ys)
