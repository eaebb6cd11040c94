"""Model families by name: what `config.model.family` selects.

A family is a folder under `llmjax/model/` (math, config section, FLOPs formula, Hugging Face
adapter, presets) plus one `register` call here. Nothing in `train/`, `data/` or the checkpoint
code names a family: they reach a model only through its `Family` entry, so a new family (or one
defined in a test) trains with the whole trainer as soon as it is registered.

Importing this module imports no JAX: configs are built and validated from the spec, FLOPs
formulas and presets alone, and the model code is loaded on first use (`Family.math()`).
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Callable, Mapping

from llmjax.errors import ConfigError
from llmjax.model.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    `math()` returns the model code: a module (or any object) with `init(rng, config) -> boxed
    params` and `apply(params, batch, *, config, with_head=True)`, where `batch` is a dict of
    the objective's arrays and the result is fp32 logits (or, without the head, the final
    hidden states and a function from hidden states to logits). A family that decodes with a
    cache (`llmjax-sample`) also offers `decoder(config)`: see `llmjax/sample/cached.py`.
    `flops` offers `param_count(model)`, `non_embedding_params(model)` and
    `flops_per_token(model, seq_len)` of a config.model section; `hf()`, when not None, the
    Hugging Face adapter (`llmjax/interop/` explains what it offers)."""
    name: str
    spec: type[ModelSpec]
    flops: ModuleType | object
    presets: Mapping[str, dict]
    math: Callable[[], object]
    hf: Callable[[], object] | None = None
    objectives: tuple[str, ...] = ("causal_lm",)  # What it can be trained on.

    def defaults(self) -> dict:
        return self.spec.defaults() | {"family": self.name}


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds a family (or replaces one of the same name, e.g. in a test); returns it."""
    if family.spec.defaults()["family"] != family.name:
        raise ValueError(f"family {family.name}: its spec's default family is "
                         f"{family.spec.defaults()['family']!r}; set `family: str = {family.name!r}`.")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    _FAMILIES.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def get(name: str) -> Family:
    if name not in _FAMILIES:
        raise ConfigError(f"config.model.family={name!r}: no such model family; choose one of "
                          f"{', '.join(_FAMILIES)}.")
    return _FAMILIES[name]


def of(config) -> Family:
    """The family of a full config (or of its model section)."""
    model = config.model if "model" in config else config
    return get(model.get("family", "llama"))


def owners(key: str) -> list[str]:
    """The families whose config.model section has `key`."""
    return [name for name, family in _FAMILIES.items() if key in family.spec.defaults()]


def find_preset(name: str) -> tuple[Family, dict] | None:
    for family in _FAMILIES.values():
        if name in family.presets:
            return family, family.presets[name]
    return None


def lazy(module: str, attribute: str | None = None) -> Callable[[], object]:
    """A loader that imports `module` (and takes its `attribute`) on first call: the model code
    needs JAX, the registry does not."""
    def load():
        loaded = importlib.import_module(module)
        return loaded if attribute is None else getattr(loaded, attribute)
    return load


def _register_builtin() -> None:
    from llmjax.model import gpt2, llama  # noqa: PLC0415 - each folder registers itself.

    for family in (llama.FAMILY, gpt2.FAMILY):
        register(family)


_register_builtin()
