"""A run's parameters: the model's, plus those fine-tuning adds (`llmjax.finetune.EXTRA_KEYS`)."""

from __future__ import annotations

import re

import jax

from llmjax.finetune import EXTRA_KEYS, lora, patterns
from llmjax.train import objectives

_EXTRA_STREAM = 0x46540001  # Extras draw from their own stream: the model's init is unchanged.


def extend(rng, config, model_params: dict) -> dict:
    """The model's (boxed) parameters plus the objective's head and the LoRA adapters the
    config asks for."""
    params = dict(model_params)
    rng = jax.random.fold_in(rng, _EXTRA_STREAM)
    init_head = getattr(objectives.of(config).impl(), "init_head", None)
    if init_head is not None:
        params["task_head"] = init_head(jax.random.fold_in(rng, 0), config, model_params)
    if config.finetune.lora_rank:
        params["lora"] = lora.init(jax.random.fold_in(rng, 1), model_params, config)
    return params


def model_part(params: dict) -> dict:
    return {key: value for key, value in params.items() if key not in EXTRA_KEYS}


def path_name(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def named_axes(param_axes) -> dict[str, tuple]:
    """{parameter path ("layers/mlp/up/kernel"): its logical axes}, from the PartitionSpecs."""
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    return {path_name(path): tuple(spec)
            for path, spec in jax.tree_util.tree_flatten_with_path(param_axes, is_leaf=is_spec)[0]}


def is_frozen(name: str, config) -> bool:
    """Whether the parameter at `name` ("layers/mlp/up/kernel") stays as pretrained: with LoRA
    every weight of the model does; otherwise those matching finetune.freeze."""
    if name.split("/")[0] in EXTRA_KEYS:
        return False
    return bool(config.finetune.lora_rank) or any(re.search(p, name) for p in patterns(config.finetune.freeze))


def backbone(params: dict, config) -> dict:
    """The parameters the model applies: frozen weights behind stop_gradient (so no gradient
    is computed for them at all), LoRA updates merged in. For a run that fine-tunes nothing in
    particular this is the model's own parameters, untouched."""
    model = model_part(params)
    if config.finetune.lora_rank or patterns(config.finetune.freeze):
        model = jax.tree_util.tree_map_with_path(
            lambda path, x: jax.lax.stop_gradient(x) if is_frozen(path_name(path), config) else x, model)
    if config.finetune.lora_rank and "lora" in params:  # Without it: already the model's (merged).
        model = lora.merge(model, params["lora"], config)
    return model
