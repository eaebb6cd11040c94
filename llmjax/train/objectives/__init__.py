"""Training objectives by name: what `config.objective.name` selects.

An objective decides what a batch is and what is predicted from it. It owns
  - its batch specification (`fields`: names, shapes, dtypes, logical axes): the one place the
    compiled step, the data pipeline and the benchmark read a batch's layout from;
  - the special tokens it needs (`special_tokens` here, trained into llmjax's tokenizer;
    `token_ids(tokenizer)` finds their ids, refusing a tokenizer without them before anything
    compiles);
  - its transform from packed token windows to rows (`rows`), a pure function of (seed, row
    index), so the batch of step s depends only on (data, seed, s) and resume stays exact;
  - its loss (`loss_sums`) and its evaluation (`eval_sums`, `target_bytes`, `metrics`, and
    `describe` for the progress line), as sums so that microbatches, devices and batches add
    exactly.
Every batch has a "weights" field, the loss weight of each scored target: the step normalises
by its sum and fault injection poisons it. The trainer calls only these, so MLM, span
corruption, prefix LM or classification are new entries here, not changes to the trainer.

This module imports no JAX: the config is built and checked with `defaults()` and `check()`;
the implementation (`Objective.impl()`) is loaded on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Callable, Mapping

from llmjax.data.tokenizer import MASK
from llmjax.errors import ConfigError, config_error
from llmjax.train.objectives import span_lengths, task_fields


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    impl: Callable[[], object]  # Loads the implementation (see llmjax/train/objectives/causal_lm.py).
    fields: Mapping[str, object] = dataclasses.field(default_factory=dict)  # config.objective keys.
    special_tokens: tuple[str, ...] = ()  # Trained into llmjax's BPE for this objective.
    # Checks of the objective's own fields and of lengths against the mesh, (config, mesh
    # shape) -> None, raising ConfigError.
    check_fields: Callable[[object, dict], None] | None = None
    # Trains a decoder to read its prompt both ways (prefix LM): sampling and scoring read it so.
    prompt_is_prefix: bool = False

    def defaults(self) -> dict:
        return {"name": self.name, **self.fields}

    def check(self, config, family) -> None:
        """Refuses a family that cannot be trained on this objective, and an objective section
        that is not this objective's, before anything runs."""
        if self.name not in family.objectives:
            raise config_error("objective.name", self.name,
                               f"the {family.name} family does not train on it; it trains on "
                               f"{', '.join(family.objectives)}.")
        section, expected = config.objective, self.defaults()
        for key in [*section, *expected]:
            if (key in section) != (key in expected):
                raise config_error(f"objective.{key}", section.get(key),
                                   f"{'is not a field' if key in section else 'is missing'} of "
                                   f"objective {self.name!r} (its fields: {', '.join(expected)}); "
                                   f"build the config with compose(preset, objective={self.name!r}) "
                                   f"or default_config(family, {self.name!r}) instead of renaming "
                                   f"another objective's section.")


def _load(module: str) -> Callable[[], object]:
    return lambda: importlib.import_module(module).OBJECTIVE


_OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    _OBJECTIVES[objective.name] = objective
    return objective


def names() -> tuple[str, ...]:
    return tuple(_OBJECTIVES)


def get(name: str) -> Objective:
    if name not in _OBJECTIVES:
        raise ConfigError(f"config.objective.name={name!r}: no such objective; choose one of "
                          f"{', '.join(_OBJECTIVES)}.")
    return _OBJECTIVES[name]


def of(config) -> Objective:
    section = config.get("objective") or {}
    return get(section.get("name", "causal_lm"))


def _check_mlm_rates(config, mesh_shape: dict[str, int]) -> None:
    """Probabilities in [0, 1] (the chosen fraction above 0), and a chosen token replaced by
    the mask or a random token with at most probability 1 in all."""
    del mesh_shape
    o = config.objective
    if not 0 < o.mask_rate <= 1:
        raise config_error("objective.mask_rate", o.mask_rate, "must be in (0, 1].")
    if o.mask_rate * config.data.seq_len < 1:
        raise config_error("objective.mask_rate", o.mask_rate,
                           f"chooses {o.mask_rate * config.data.seq_len:.2g} of a window's {config.data.seq_len} "
                           f"tokens on average: most windows would have nothing to predict; raise it or data.seq_len.")
    for key in ("mask_token_rate", "random_token_rate"):
        if not 0 <= o[key] <= 1:
            raise config_error(f"objective.{key}", o[key], "must be in [0, 1].")
    if o.mask_token_rate + o.random_token_rate > 1:
        raise config_error("objective.random_token_rate", o.random_token_rate,
                           f"plus objective.mask_token_rate={o.mask_token_rate} must be at most 1 (the "
                           f"rest of the chosen tokens are kept as they are); lower one of them.")


register(Objective("causal_lm", _load("llmjax.train.objectives.causal_lm")))
register(Objective("prefix_lm", _load("llmjax.train.objectives.prefix_lm"), prompt_is_prefix=True))
register(Objective("mlm", _load("llmjax.train.objectives.mlm"), special_tokens=(MASK,), check_fields=_check_mlm_rates, fields={
    "mask_rate": 0.15,  # Of the text tokens, the fraction chosen for prediction.
    "mask_token_rate": 0.8,  # Of the chosen, the fraction replaced by the mask token ...
    "random_token_rate": 0.1,  # ... and by a random text token; the rest are kept as they are.
}))
register(Objective("classify", _load("llmjax.train.objectives.classify"), fields=task_fields.FIELDS,
                   check_fields=task_fields.check_fields))
register(Objective("sft", _load("llmjax.train.objectives.sft"), fields=task_fields.GENERATION_FIELDS,
                   check_fields=functools.partial(task_fields.check_generation_fields, in_context=True)))
register(Objective("seq2seq", _load("llmjax.train.objectives.seq2seq"), check_fields=task_fields.check_generation_fields,
                   fields={**task_fields.GENERATION_FIELDS,
                           "targets_length": 64}))  # Decoder tokens: the response and end-of-document.
register(Objective("span", _load("llmjax.train.objectives.span"), check_fields=span_lengths.check,
                   special_tokens=tuple(f"<|sentinel_{i}|>" for i in range(span_lengths.SENTINELS)), fields={
    "noise_density": 0.15,  # Fraction of each document's tokens replaced (T5's default).
    "mean_span_length": 3.0,  # Mean length of a replaced span, in tokens.
    # Decoder length; 0: what the encoder's data.seq_len needs (span_lengths), e.g. 114 for 512.
    "targets_length": 0,
}))
