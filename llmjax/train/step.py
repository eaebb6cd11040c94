"""The pure train and eval steps. They know nothing of devices: the caller jits them with
explicit shardings (see `llmjax.run`), and XLA inserts the collectives. What a batch holds and
what the loss is belong to the objective (`llmjax.train.objectives`); the step only sums,
differentiates, clips and updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from llmjax.model.layers import moe_stats
from llmjax.train import objectives
from llmjax.train.optimizer import learning_rate_schedule
from llmjax.train.state import TrainState


def _scaled_loss(params, batch, config, total_weight):
    """The microbatch's share of the step's loss; (NLL sum, z-loss sum, MoE summary) beside it.
    An MoE model's auxiliary loss is a mean over the microbatch, so each of M microbatches adds
    1/M of it."""
    objective = objectives.of(config).impl()
    with moe_stats.collecting() as records:
        nll, z, _ = objective.loss_sums(params, batch, config=config, z_loss=config.train.z_loss)
    router = moe_stats.summary(records, config.model)
    aux = router["moe_aux_loss"] / config.train.microbatches if router else 0.0
    return (nll + z) / total_weight + aux, (nll, z, router)


def _split_microbatches(x, count: int):
    """[B, ...] -> [count, B/count, ...], microbatch m = rows m, m+count, ...: every device keeps
    an equal share of every microbatch, so accumulation needs no data movement."""
    return jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1)


def _gradients(params, batch, config, total_weight):
    grad_fn = jax.value_and_grad(_scaled_loss, has_aux=True)
    count = config.train.microbatches
    if count == 1:
        (_, sums), grads = grad_fn(params, batch, config, total_weight)
        return grads, sums

    def accumulate(carry, micro):
        (_, sums), grads = grad_fn(params, micro, config, total_weight)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    micro = jax.tree.map(lambda x: _split_microbatches(x, count), batch)
    first = jax.tree.map(lambda x: x[0], micro)
    sums = jax.eval_shape(lambda p, b: _scaled_loss(p, b, config, total_weight)[1], params, first)
    zeros = (jax.tree.map(jnp.zeros_like, params), jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), sums))
    (grads, (nll, z, router)), _ = jax.lax.scan(accumulate, zeros, micro)
    return grads, (nll, z, jax.tree.map(lambda x: x / count, router))


def train_step(state: TrainState, batch, *, config, tx: optax.GradientTransformation):
    """One optimizer step over the global batch; returns the new state and scalar metrics.

    The loss is normalised by the batch's total token weight (not per microbatch), so
    accumulating M microbatches gives exactly the gradient of the whole batch. A step whose loss
    or gradient is not finite leaves params and optimizer state untouched and is counted."""
    total_weight = jnp.maximum(jnp.sum(batch["weights"]), 1.0)
    grads, (nll, z, router) = _gradients(state.params, batch, config, total_weight)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(nll) & jnp.isfinite(z) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    optimizer_steps = state.step - state.skipped_steps
    new_state = TrainState(step=state.step + 1,
                           params=keep_if_finite(params, state.params),
                           opt_state=keep_if_finite(opt_state, state.opt_state),
                           skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    metrics = {"loss": nll / total_weight, "z_loss": z / total_weight, "grad_norm": grad_norm,
               "learning_rate": learning_rate_schedule(config)(optimizer_steps),
               "skipped": (~finite).astype(jnp.int32), "tokens": total_weight}
    return new_state, metrics | moe_stats.scalar_metrics(router, config.model)


def eval_step(params, batch, *, config):
    """The objective's evaluation sums of one batch; sums, so batches add exactly."""
    return objectives.of(config).impl().eval_sums(params, batch, config=config)


def position_eval_step(params, batch, *, config):
    """The objective's per-position evaluation sums of one batch (see CausalLM.position_sums)."""
    return objectives.of(config).impl().position_sums(params, batch, config=config)
