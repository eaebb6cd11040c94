"""AdamW (or Muon for the hidden matrices, llmjax/train/muon.py) with warmup and decay,
global-norm clipping, and no weight decay on norms, biases or embeddings."""

from __future__ import annotations

import functools

import jax
import optax

from llmjax import finetune
from llmjax.finetune import partition
from llmjax.finetune.params import named_axes, path_name
from llmjax.train import muon

# Matmul weights (the LSTM's recurrent ones included); embeddings, norm scales and biases are not.
DECAYED_LEAVES = ("kernel", "lm_head", "recurrent")


def learning_rate_schedule(config) -> optax.Schedule:
    o, steps = config.optimizer, config.train.steps
    peak, end = o.learning_rate, o.learning_rate * o.min_lr_ratio
    warmup = optax.linear_schedule(0.0, peak, o.warmup_steps)
    decay_steps = steps - o.warmup_steps
    if o.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=o.min_lr_ratio)
    elif o.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    return optax.join_schedules([warmup, decay], [o.warmup_steps])


def weight_decay_mask(params, param_axes) -> dict:
    """Which parameters AdamW decays: the matmul weights, found by name, and an MoE layer's
    experts, bare arrays found by their `experts` axis (`param_axes`: each parameter's logical
    axes) -- the matrices Muon decays too, so that both optimizers regularise the same weights."""
    experts = {name for name, axes in named_axes(param_axes).items() if "experts" in axes}
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in DECAYED_LEAVES or path_name(path) in experts, params)


def build_optimizer(config, param_axes) -> optax.GradientTransformation:
    """AdamW; with optimizer.name=muon, Muon for the matrices that `param_axes` (the logical
    axes of every parameter) show, AdamW for the rest; for a fine-tuning run that freezes or
    groups parameters, one of each per group (llmjax/finetune/partition.py)."""
    o = config.optimizer
    finetune.check_names(config, list(named_axes(param_axes)))

    def adamw(schedule):
        return optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                           mask=functools.partial(weight_decay_mask, param_axes=param_axes))
    schedule = learning_rate_schedule(config)
    if o.name == "muon":
        matrices = muon.matrices(param_axes)

        def orthogonalised(schedule):
            return optax.chain(muon.scale_by_muon(matrices, config), optax.add_decayed_weights(o.weight_decay),
                               optax.scale_by_learning_rate(schedule))
        tx = partition.grouped({"adamw": adamw, "muon": orthogonalised}, schedule, config,
                               kind=lambda name: "muon" if name in matrices else "")
    elif finetune.is_active(config):
        tx = partition.grouped({"adamw": adamw}, schedule, config)
    else:
        tx = adamw(schedule)
    if o.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx
