"""Where a run's first state comes from: its own latest checkpoint, another run's checkpoint
(`checkpoint.init_from`), or a fresh initialisation, in that order of precedence."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from llmjax.checkpoint import CheckpointError, Checkpointer, saved_params
from llmjax.finetune import EXTRA_KEYS, lora
from llmjax.finetune.params import model_part
from llmjax.rundir import RunDir, saved_steps
from llmjax.train.state import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class InitSource:
    workdir: Path
    step: int | None  # None: the latest.


def parse_init_from(value: str) -> InitSource | None:
    """`WORKDIR` or `WORKDIR@STEP`, checked before any work starts."""
    if not value:
        return None
    path, _, step = value.partition("@")
    if step and not step.isdigit():
        raise CheckpointError(f"config.checkpoint.init_from={value!r}: the part after @ must be a "
                              f"step number, e.g. {path}@1000.")
    directory = RunDir(path).checkpoints
    if not directory.is_dir():
        raise CheckpointError(f"config.checkpoint.init_from={value!r}: {directory} does not exist; "
                              f"give the workdir of a run that has saved checkpoints.")
    saved = saved_steps(directory)
    if not saved or (step and int(step) not in saved):
        raise CheckpointError(f"config.checkpoint.init_from: {directory.parent} has no checkpoint "
                              f"of step {step or '(latest)'}; it has {saved}.")
    return InitSource(Path(path).expanduser().resolve(), int(step) if step else None)


def state_from_checkpoint(restored, target: TrainState, keep_optimizer: bool) -> TrainState:
    scalar = lambda value, like: jax.device_put(jnp.asarray(value, like.dtype), like.sharding)  # noqa: E731
    meta = restored.meta
    return TrainState(step=scalar(meta["step"] if keep_optimizer else 0, target.step),
                      params=restored.params,
                      opt_state=restored.opt_state,
                      skipped_steps=scalar(meta.get("skipped_steps", 0) if keep_optimizer else 0,
                                           target.skipped_steps))


def initial_state(config, tx, target: TrainState, checkpointer: Checkpointer, log):
    """(state, data_step, meta) to start training from; meta is the resumed checkpoint's
    (what the loop's other state continues from), {} when the run starts afresh."""
    restored = checkpointer.restore_latest(target.params, target.opt_state)
    if restored is not None:
        log(f"resuming from checkpoint step {restored.step} (data step {restored.meta['data_step']})")
        return state_from_checkpoint(restored, target, True), restored.meta["data_step"], restored.meta
    source = parse_init_from(config.checkpoint.init_from)  # Checked once already, at the start.
    if source is None:
        return create_train_state(config, tx, jax.tree.map(lambda x: x.sharding, target)), 0, {}
    full = config.checkpoint.init_mode == "full"
    other = Checkpointer(RunDir(source.workdir).checkpoints, config, log, read_only=True)
    step = source.step if source.step is not None else other.steps()[-1]
    if full:
        restored = other.restore(step, target.params, target.opt_state)
        other.close()
        log(f"initialised from {source.workdir} step {step} (full state)")
        return state_from_checkpoint(restored, target, True), restored.meta["data_step"], {}
    saved = saved_params(other.directory, step)
    extras = [key for key in EXTRA_KEYS if key in saved]
    restored = other.restore(step, source_params_target(saved, model_part(target.params), extras))
    other.close()
    params = source_model(restored.params, RunDir(source.workdir).config, model_part(target.params))
    log(f"initialised from {source.workdir} step {step} (params only"
        + (f"; the model without its {' and '.join(EXTRA_NAMES[key] for key in extras)}" if extras else "")
        + ("; its LoRA adapters merged in" if "lora" in extras else "") + ")")
    fresh = create_train_state(config, tx, jax.tree.map(lambda x: x.sharding, target))
    return dataclasses.replace(fresh, params=fresh.params | params), 0, {}


EXTRA_NAMES = {"task_head": "task head", "lora": "LoRA adapters"}


def source_params_target(saved, model_target: dict, extras: list[str]) -> dict:
    """What to restore of a source run's checkpoint (`saved`: its parameters' metadata): the
    model onto this run's shardings, and a fine-tuned source's extras (`extras`), replicated as
    they are saved."""
    if not extras:
        return model_target
    replicated = jax.sharding.NamedSharding(jax.tree.leaves(model_target)[0].sharding.mesh, jax.sharding.PartitionSpec())
    return model_target | {key: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
                                             saved[key]) for key in extras}


def source_model(params: dict, source_config, model_target: dict) -> dict:
    """The model a source run's parameters define: a LoRA-tuned run's with its adapters merged
    into the kernels (as its own steps applied them), placed as this run's model is."""
    if "lora" not in params:
        return model_part(params)
    merged = jax.jit(lambda p: lora.merge(model_part(p), p["lora"], source_config),
                     out_shardings=jax.tree.map(lambda x: x.sharding, model_target))
    return merged(params)
