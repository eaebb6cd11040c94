"""What the registry knows of a model family: its config section, FLOPs formula, presets, and
loaders for its model code and Hugging Face adapter (imported on first use: they need JAX,
while configs are built and checked before JAX starts)."""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Callable, Mapping

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
    # The token whose final hidden state a sequence classifier reads: a decoder's last (the
    # only one that has seen the whole text), a bidirectional encoder's first (BERT's [CLS]).
    pooling: str = "last"
    # LoRA's targets when finetune.lora_targets is empty: the attention's query and value
    # projections (Hu et al.'s choice), by this family's module names ("" = none to default to).
    lora_targets: str = "query,value"

    def defaults(self) -> dict:
        return self.spec.defaults() | {"family": self.name}


def lazy(module: str, attribute: str | None = None) -> Callable[[], object]:
    """A loader that imports `module` (and takes its `attribute`) on first call: the model code
    needs JAX, the registry does not."""
    def load():
        loaded = importlib.import_module(module)
        return loaded if attribute is None else getattr(loaded, attribute)
    return load
