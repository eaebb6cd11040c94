"""The optimizer of a fine-tuning run: one transform per parameter group (optax.multi_transform).

Frozen parameters get `optax.set_to_zero`: no optimizer state, and an update of exactly zero,
so they stay bit-identical to the pretrained ones. A group named by finetune.lr_multipliers
gets the same optimizer with its learning-rate schedule scaled. Clipping sees every gradient
(frozen ones are zero: `backbone` stops them).
"""

from __future__ import annotations

import re

import jax
import optax

from llmjax.finetune import multipliers
from llmjax.finetune.params import is_frozen, path_name

FROZEN, TRAINED = "frozen", "trained"


def labels(params, config):
    """The group of every parameter: frozen, trained, or "x<multiplier>" of the first
    lr_multipliers pattern its path matches."""
    groups = multipliers(config.finetune.lr_multipliers)

    def label(path, _):
        name = path_name(path)
        if is_frozen(name, config):
            return FROZEN
        return next((f"x{scale:g}" for regex, scale in groups if re.search(regex, name)), TRAINED)
    return jax.tree_util.tree_map_with_path(label, params)


def grouped(make, schedule, config) -> optax.GradientTransformation:
    """`make(schedule)` for the trained parameters, scaled schedules for the groups, zero
    updates for the frozen."""
    transforms = {FROZEN: optax.set_to_zero(), TRAINED: make(schedule)}
    for _, scale in multipliers(config.finetune.lr_multipliers):
        transforms[f"x{scale:g}"] = make(lambda step, scale=scale: schedule(step) * scale)
    return optax.multi_transform(transforms, lambda params: labels(params, config))
