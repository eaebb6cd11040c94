"""Where a run's first state comes from: its own latest checkpoint, another run's checkpoint
(`checkpoint.init_from`), or a fresh initialisation, in that order of precedence."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from llmjax.checkpoint import CheckpointError, Checkpointer
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
    restored = other.restore(step, target.params if full else model_part(target.params), target.opt_state if full else None)
    other.close()
    log(f"initialised from {source.workdir} step {step} ({'full state' if full else 'params only'})")
    if full:
        return state_from_checkpoint(restored, target, True), restored.meta["data_step"], {}
    fresh = create_train_state(config, tx, jax.tree.map(lambda x: x.sharding, target))
    return dataclasses.replace(fresh, params=fresh.params | restored.params), 0, {}
