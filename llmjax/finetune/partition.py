"""The optimizer's parameter groups, one transform each (optax.multi_transform): a fine-tuning
run's frozen and rate-scaled groups, and with Muon its matrices beside AdamW's other parameters.

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


def labels(params, config, kind=lambda name: ""):
    """The group of every parameter: frozen, trained, or "x<multiplier>" of the first
    lr_multipliers pattern its path matches; then "/<kind>" where `kind(path)` names another
    optimizer than the first (Muon's matrices)."""
    groups = multipliers(config.finetune.lr_multipliers)

    def label(path, _):
        name = path_name(path)
        if is_frozen(name, config):
            return FROZEN
        group = next((f"x{scale:g}" for regex, scale in groups if re.search(regex, name)), TRAINED)
        return group + (f"/{kind(name)}" if kind(name) else "")
    return jax.tree_util.tree_map_with_path(label, params)


def grouped(makers: dict, schedule, config, kind=lambda name: "") -> optax.GradientTransformation:
    """For each optimizer of `makers` ({kind: make(schedule)}, the first for the parameters
    `kind` gives ""): one for the trained parameters and one with a scaled schedule per
    lr_multipliers group; zero updates for the frozen."""
    transforms = {FROZEN: optax.set_to_zero()}
    for i, (name, make) in enumerate(makers.items()):
        suffix = f"/{name}" if i else ""
        transforms[TRAINED + suffix] = make(schedule)
        for _, scale in multipliers(config.finetune.lr_multipliers):
            transforms[f"x{scale:g}{suffix}"] = make(lambda step, scale=scale: schedule(step) * scale)
    return optax.multi_transform(transforms, lambda params: labels(params, config, kind))
