"""Ahead-of-time compilation of the steps with explicit shardings.

Compiling against abstract shapes (ShapeDtypeStructs carrying shardings) means a run knows
its executable before it allocates anything, and the planner can compile a 7B model for 64
devices on a laptop to read off its memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from llmjax.parallel.rules import batch_sharding
from llmjax.train.step import eval_step, train_step

BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "weights")


def batch_spec(config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (config.train.global_batch_size, config.data.seq_len)
    rows = batch_sharding(mesh)
    return {key: jax.ShapeDtypeStruct(shape, jnp.float32 if key == "weights" else jnp.int32,
                                      sharding=rows) for key in BATCH_KEYS}


def lower_train_step(config, tx, mesh, state):
    """The train step lowered for `state` (concrete or abstract), state donated."""
    shardings = jax.tree.map(lambda x: x.sharding, state)
    replicated = NamedSharding(mesh, PartitionSpec())
    train = jax.jit(functools.partial(train_step, config=config, tx=tx),
                    in_shardings=(shardings, batch_sharding(mesh)),
                    out_shardings=(shardings, replicated), donate_argnums=0)
    with jax.set_mesh(mesh):
        return train.lower(state, batch_spec(config, mesh))


def compile_eval_step(config, mesh, params):
    """The eval step compiled for `params` (concrete or abstract): (nll sum, token count)."""
    shardings = jax.tree.map(lambda x: x.sharding, params)
    evaluate = jax.jit(functools.partial(eval_step, config=config),
                       in_shardings=(shardings, batch_sharding(mesh)),
                       out_shardings=NamedSharding(mesh, PartitionSpec()))
    with jax.set_mesh(mesh):
        return evaluate.lower(params, batch_spec(config, mesh)).compile()


def compile_steps(config, tx, mesh, state):
    """(train step, eval step), both compiled, so a run never recompiles and the compile time
    is measured on its own."""
    with jax.set_mesh(mesh):
        return lower_train_step(config, tx, mesh, state).compile(), compile_eval_step(config, mesh, state.params)
