"""Fine-tuning a pretrained run: what of its parameters trains, and how fast.

A fine-tuning run starts from another run's parameters (`checkpoint.init_from`) and may add
parameters of its own, kept beside the model's under top-level keys the model never sees
(`EXTRA_KEYS`): a task head (`task_head`, owned by the objective) and LoRA adapters (`lora`).
`llmjax.finetune.params.backbone` turns a run's parameters into the model's, merging the
adapters and stopping gradients at frozen weights, so the model code and every objective stay
as they are; the optimizer (`llmjax.finetune.partition`) leaves frozen weights untouched and
gives parameter groups their own learning rates.

This module imports no JAX: the config section is checked before anything starts.
"""

from __future__ import annotations

import re

from llmjax.errors import config_error
from llmjax.model import registry

EXTRA_KEYS = ("task_head", "lora")  # Parameters of a run that are not the model's.


def patterns(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def multipliers(text: str) -> list[tuple[str, float]]:
    """"REGEX=MULTIPLIER,..." -> [(regex, multiplier)], in order (the first match wins)."""
    groups = []
    for part in patterns(text):
        regex, _, value = part.rpartition("=")
        groups.append((regex, float(value)))
    return groups


def lora_targets(config) -> list[str]:
    """The module names LoRA adapts: finetune.lora_targets, or the family's default."""
    return patterns(config.finetune.lora_targets or registry.of(config).lora_targets)


def is_active(config) -> bool:
    """Whether anything trains differently from pretraining (otherwise the optimizer is the
    pretraining one, state and checkpoints included)."""
    f = config.finetune
    return bool(f.lora_rank or patterns(f.freeze) or patterns(f.lr_multipliers))


def check(config) -> None:
    f = config.finetune
    if not isinstance(f.lora_rank, int) or f.lora_rank < 0:
        raise config_error("finetune.lora_rank", f.lora_rank, "must be an integer >= 0 (0 = no LoRA).")
    if f.lora_rank and not f.lora_alpha > 0:
        raise config_error("finetune.lora_alpha", f.lora_alpha, "must be positive.")
    if f.lora_rank and not lora_targets(config):
        raise config_error("finetune.lora_targets", f.lora_targets,
                           f"names no projection, and the {config.model.family} family has no default targets: "
                           f"LoRA adapts attention and MLP projections (module names such as query,value), "
                           f"which it has none of; fine-tune it fully, or freeze parts with finetune.freeze.")
    if f.lora_rank and not config.checkpoint.init_from:
        raise config_error("finetune.lora_rank", f.lora_rank,
                           "adapts a pretrained model and freezes its weights, which without "
                           "checkpoint.init_from are random; set --config.checkpoint.init_from=RUN.")
    if f.lora_rank and config.optimizer.name == "muon":
        raise config_error("optimizer.name", "muon",
                           "with LoRA the model's matrices are frozen and Muon leaves low-rank adapters "
                           "to AdamW, so the run would train as AdamW; use optimizer.name=adamw.")
    for key in ("freeze", "lr_multipliers"):
        for part in patterns(f[key]):
            regex = part.rpartition("=")[0] if key == "lr_multipliers" else part
            try:
                re.compile(regex)
                if key == "lr_multipliers" and not (regex and float(part.rpartition("=")[2]) >= 0):
                    raise ValueError
            except (re.error, ValueError):
                raise config_error(f"finetune.{key}", f[key],
                                   f"entry {part!r} is not " + ("a regular expression" if key == "freeze" else
                                                                "REGEX=MULTIPLIER with a multiplier >= 0") +
                                   "; e.g. " + ("'embed,layers/attention'." if key == "freeze" else
                                                "'task_head=10,embed=0.1'.")) from None


def check_names(config, names: list[str]) -> None:
    """Refuses, once the parameters' paths are known and before anything compiles, a freeze or
    lr_multipliers pattern that matches none of them (a misspelt one would train as if it were
    not there) and a freeze that leaves nothing to train."""
    f = config.finetune
    shown = ", ".join(sorted({"/".join(name.split("/")[:2]) for name in names}))
    for key, regexes in (("freeze", patterns(f.freeze)), ("lr_multipliers", [r for r, _ in multipliers(f.lr_multipliers)])):
        for regex in regexes:
            if not any(re.search(regex, name) for name in names):
                raise config_error(f"finetune.{key}", f[key], f"pattern {regex!r} matches no parameter; "
                                                              f"parameter paths begin {shown}.")
    if patterns(f.freeze) and all(name.split("/")[0] not in EXTRA_KEYS and
                                  any(re.search(p, name) for p in patterns(f.freeze)) for name in names):
        raise config_error("finetune.freeze", f.freeze, "freezes every parameter, so nothing would train; "
                                                       "freeze fewer (a task's head is never frozen).")
