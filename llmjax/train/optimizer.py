"""AdamW with warmup and decay, global-norm clipping, and no weight decay on norms/embeddings."""

from __future__ import annotations

import jax
import optax

from llmjax import finetune
from llmjax.finetune import partition

DECAYED_LEAVES = ("kernel", "lm_head")  # Matmul weights; embeddings and norm scales are not.


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


def weight_decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in DECAYED_LEAVES, params)


def build_optimizer(config) -> optax.GradientTransformation:
    """AdamW; for a fine-tuning run that freezes or groups parameters, one per group
    (llmjax/finetune/partition.py)."""
    o = config.optimizer

    def make(schedule):
        return optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                           mask=weight_decay_mask)
    adamw = (partition.grouped(make, learning_rate_schedule(config), config) if finetune.is_active(config)
             else make(learning_rate_schedule(config)))
    if o.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw)
    return adamw
