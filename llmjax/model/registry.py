"""Model families by name: what `config.model.family` selects.

A family is a folder under `llmjax/model/` (math, config section, FLOPs formula, Hugging Face
adapter, presets) whose `FAMILY` (a `llmjax.model.family.Family`) is registered here. Nothing
in `train/`, `data/` or the checkpoint code names a family: they reach a model only through its
`Family` entry, so a new family (or one defined in a test) trains with the whole trainer as soon
as it is registered.

Importing this module imports no JAX: configs are built and validated from the spec, FLOPs
formulas and presets alone, and the model code is loaded on first use (`Family.math()`).
"""

from __future__ import annotations

from llmjax.errors import ConfigError
from llmjax.model import bert, gpt2, llama, lstm, t5
from llmjax.model.family import Family


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


for _builtin in (llama.FAMILY, gpt2.FAMILY, lstm.FAMILY, bert.FAMILY, t5.FAMILY):
    register(_builtin)
