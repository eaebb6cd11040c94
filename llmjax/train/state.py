"""The train state pytree and its creation directly into its sharded layout.

Parameters are never materialised whole on one device: `llmjax.run` derives the state's
shardings from abstract shapes, and the initialiser is jitted with those as its output
shardings, so each device computes only its own shards.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from llmjax import cpu_runtime, model


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


def create_train_state(config, tx, shardings: TrainState) -> TrainState:
    rng = jax.random.key(config.seed)
    # No mesh context here: the out_shardings place the result, and Flax's DenseGeneral would
    # otherwise constrain its kernel by the logical names before reshaping it to their rank.
    init_fn = jax.jit(functools.partial(fresh_state, config=config, tx=tx), out_shardings=shardings,
                      compiler_options=cpu_runtime.for_one_call())
    return init_fn(rng)
