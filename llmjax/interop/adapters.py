"""Which family's Hugging Face adapter handles a model: by the HF config's model_type when
importing, by config.model.family when exporting."""

from __future__ import annotations

from llmjax.interop.tensor_map import InteropError
from llmjax.model import registry


def _importable() -> dict[str, registry.Family]:
    """{HF model_type: family}; an adapter may read several (MODEL_TYPES: Llama's reads Mixtral)."""
    return {model_type: family for family in map(registry.get, registry.names()) if family.hf
            for model_type in getattr(family.hf(), "MODEL_TYPES", (family.hf().MODEL_TYPE,))}


def for_hf_config(hf: dict):
    """The adapter for an HF config.json; refuses a model_type no family converts."""
    families = _importable()
    model_type = hf.get("model_type")
    if model_type not in families:
        raise InteropError(f"config.json: model_type is {model_type!r}; llmjax imports "
                           f"{', '.join(repr(t) for t in families)} checkpoints.")
    return families[model_type].hf()


def for_config(config):
    """The adapter of a run's family; refuses a family without one."""
    family = registry.of(config)
    if family.hf is None:
        raise InteropError(f"the {family.name} family has no Hugging Face adapter; it cannot be "
                           f"exported or imported.")
    return family.hf()
