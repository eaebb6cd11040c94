"""The train state pytree and its creation directly into its sharded layout.

Parameters are never materialised whole on one device: the shapes and logical axes come from
`jax.eval_shape`, the rules table turns them into shardings, and the initialiser is jitted with
those as its output shardings, so each device computes only its own shards.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from llmjax import model
from llmjax.parallel.rules import logical_to_sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # Optimizer steps taken (including skipped ones): the data position.
    params: dict
    opt_state: optax.OptState
    skipped_steps: jax.Array  # Updates refused because the loss or a gradient was not finite.


def fresh_state(rng, config, tx) -> TrainState:
    params = nn.unbox(model.init(rng, config))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      skipped_steps=jnp.zeros((), jnp.int32))


def param_logical_axes(config):
    """PartitionSpecs of logical axis names, one per parameter."""
    boxed = jax.eval_shape(functools.partial(model.init, config=config), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def state_shardings(config, tx, mesh) -> TrainState:
    """Optimizer moments are sharded like their parameters; scalars are replicated."""
    params = logical_to_sharding(param_logical_axes(config), mesh)
    abstract = jax.eval_shape(functools.partial(fresh_state, config=config, tx=tx), jax.random.key(0))
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = optax.tree_map_params(tx, lambda _, sharding: sharding, abstract.opt_state, params,
                                      transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=params, opt_state=opt_state, skipped_steps=replicated)


def create_train_state(config, tx, shardings: TrainState) -> TrainState:
    rng = jax.random.key(config.seed)
    # No mesh context here: the out_shardings place the result, and Flax's DenseGeneral would
    # otherwise constrain its kernel by the logical names before reshaping it to their rank.
    init_fn = jax.jit(functools.partial(fresh_state, config=config, tx=tx), out_shardings=shardings)
    return init_fn(rng)
