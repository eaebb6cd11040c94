"""Carries MoE layers' auxiliary losses and routing statistics from the forward pass to the
train step.

Every objective calls `model.forward` and returns sums of its own loss; the router's losses
are a by-product of that forward pass which only the step adds. Rather than thread them
through every objective's return value, the model records them (`record`, called by the
family module outside its layer scan, so the values belong to the caller's trace) and the step
reads what was recorded while it computed the loss (`collecting`). Outside `collecting`, as in
evaluation and sampling, nothing is kept.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

_RECORDS: contextvars.ContextVar[list | None] = contextvars.ContextVar("moe_records", default=None)


@contextlib.contextmanager
def collecting():
    """Yields the list the forward passes inside the block record their statistics into."""
    records: list = []
    token = _RECORDS.set(records)
    try:
        yield records
    finally:
        _RECORDS.reset(token)


def record(stats) -> None:
    """Called by a model with its MoE layers' statistics stacked over those layers."""
    records = _RECORDS.get()
    if records is not None:
        records.append(stats)


def summary(records: list, model) -> dict:
    """{} for a dense model; else the weighted auxiliary loss the step adds ("moe_aux_loss"),
    its two terms averaged over MoE layers, and per MoE layer the fraction of pairs dropped [L]
    and of pairs per expert [L, E]."""
    if not records:
        return {}
    stats = jax.tree.map(lambda *xs: sum(xs) / len(xs), *records)
    balance, z = jnp.mean(stats["load_balancing_loss"]), jnp.mean(stats["router_z_loss"])
    return {"moe_aux_loss": model.load_balancing_weight * balance + model.router_z_weight * z,
            "moe_load_balancing_loss": balance, "moe_router_z_loss": z,
            "moe_dropped_fraction": stats["dropped_fraction"], "moe_expert_fraction": stats["expert_fraction"]}


def scalar_metrics(summary_: dict, model) -> dict:
    """The summary as scalar metrics, per-layer values named by their model layer:
    "moe_dropped/layer_3", "moe_expert_fraction/layer_3/expert_0", ..."""
    metrics = {k: v for k, v in summary_.items() if jnp.ndim(v) == 0}
    if not summary_:
        return metrics
    for i, (dropped, fractions) in enumerate(zip(summary_["moe_dropped_fraction"], summary_["moe_expert_fraction"])):
        layer = (i + 1) * model.moe_every - 1
        metrics[f"moe_dropped/layer_{layer}"] = dropped
        metrics |= {f"moe_expert_fraction/layer_{layer}/expert_{e}": f for e, f in enumerate(fractions)}
    return metrics
