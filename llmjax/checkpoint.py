"""Orbax checkpoints of a run: when to save, what to keep, and restoring the newest intact one.

A checkpoint has three items: `params`, `opt_state` (sharded arrays, restorable onto any mesh
because the caller gives the target shardings) and `meta` (JSON: step, data position, loss,
wall time, llmjax version and commit, the resolved config). The data order is a function of
(seed, data_step), so the JSON holds everything needed to continue the stream exactly.

Orbax writes each checkpoint under a temporary name and renames it when complete, so a save
killed midway is never mistaken for a checkpoint. Once a checkpoint is complete, llmjax
records the size of each of its files in `checkpoints/integrity/STEP.json` (within a step of
completing, and only for checkpoints it saw complete), so that a file truncated or deleted
later is named when the checkpoint is read. A checkpoint that fails to
load is moved aside to `checkpoints/damaged/`, never deleted, and the previous one is tried.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import shutil
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as keep
from orbax.checkpoint.checkpoint_managers import save_decision_policy as when

import llmjax
from llmjax.parallel import distributed
from llmjax.rundir import RunDir
from llmjax.errors import LlmjaxError


class CheckpointError(LlmjaxError, RuntimeError):
    """No usable checkpoint, or checkpoints cannot be written; says which and what to do."""


@dataclasses.dataclass
class Restored:
    step: int
    params: dict
    opt_state: object | None
    meta: dict


@functools.cache
def source_commit() -> str:
    """The git commit of the llmjax source tree, or "unknown" outside a checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(llmjax.__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _options(config, read_only: bool) -> ocp.CheckpointManagerOptions:
    c = config.checkpoint
    save_policies = [when.PreemptionCheckpointingPolicy()]
    if c.every_steps:
        save_policies.append(when.FixedIntervalPolicy(c.every_steps))
    if c.every_minutes:
        save_policies.append(when.ContinuousCheckpointingPolicy(
            minimum_interval_secs=int(c.every_minutes * 60)))
    keep_policies = [keep.LatestN(c.keep_last)]
    if c.keep_every:
        keep_policies.append(keep.EveryNSteps(c.keep_every))
    return ocp.CheckpointManagerOptions(
        save_decision_policy=when.AnySavePolicy(save_policies),
        preservation_policy=keep.AnyPreservationPolicy(keep_policies),
        enable_async_checkpointing=c.async_save, read_only=read_only,
        async_options=ocp.AsyncOptions(timeout_secs=max(1, int(c.save_timeout_minutes * 60))),
        cleanup_tmp_directories=not read_only, create=not read_only)


class Checkpointer:
    """Saves on the configured schedule and restores the newest checkpoint that loads."""

    def __init__(self, directory: Path, config, log=print, read_only: bool = False):
        self.directory, self.config, self.log = Path(directory), config, log
        self.read_only = read_only
        self.blocked_seconds = 0.0  # Time the training loop spent inside save() calls.
        self.saves = 0
        self._last_started = -1  # The step of the newest save started, for error messages.
        self._unrecorded: set[int] = set()  # Saved by this Checkpointer, manifest not yet written.
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=_options(config, read_only))
        except OSError as error:
            raise CheckpointError(f"cannot create checkpoint directory {self.directory}: {error}; "
                                  f"choose a writable --workdir.") from None

    def _integrity_path(self, step: int) -> Path:
        return integrity_path(self.directory, step)

    def _record_integrity(self) -> None:
        """Writes the file-size manifest of each checkpoint this Checkpointer saved, as soon as
        its save has completed. A checkpoint found on disk without one (its writer was killed
        in between) is never recorded later: its files as they are now may already be damaged.
        A disk too full for the manifest is a failed save like any other."""
        if (self.read_only or not distributed.is_primary() or not self._unrecorded
                or self.manager.is_saving_in_progress()):
            return
        steps = self.steps()
        try:
            for stale in (self.directory / "integrity").glob("*.json"):  # Deleted by keep_last.
                if int(stale.stem) not in steps:
                    stale.unlink()
            for step in sorted(self._unrecorded & set(steps)):
                root, path = self.directory / str(step), self._integrity_path(step)
                sizes = {str(f.relative_to(root)): f.stat().st_size for f in sorted(root.rglob("*"))
                         if f.is_file()}
                path.parent.mkdir(exist_ok=True)
                tmp = path.with_suffix(".tmp")
                try:
                    tmp.write_text(json.dumps(sizes))
                    tmp.replace(path)
                finally:
                    tmp.unlink(missing_ok=True)
            self._unrecorded.clear()
        except OSError as error:
            self._failed(steps[-1], error)

    def poll(self) -> None:
        """Called every step: records the integrity of saves that have completed since."""
        self._record_integrity()

    def adopt(self, step: int) -> None:
        """Takes a checkpoint written by other means (an import) as this Checkpointer's own, to
        be recorded like one it saved."""
        self._unrecorded.add(step)

    def _verify(self, step: int) -> None:
        verify_sizes(self.directory, step)

    def save(self, step: int, state, meta, force: bool = False) -> bool:
        """Starts a save if the policy (or `force`) says so; returns whether it did. With async
        saving this blocks only for the device-to-host copy. `meta` is a callable, evaluated
        only when a save happens."""
        if not force and not self.manager.should_save(step):
            return False
        self._record_integrity()
        start = time.perf_counter()
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave(state.opt_state),
                meta=ocp.args.JsonSave(meta())), force=force)
        except Exception as error:  # noqa: BLE001 - a full disk, a timeout, another process's failure.
            self._failed(step, error)
            return False
        if saved:
            self._last_started = step
            self.blocked_seconds += time.perf_counter() - start
            self.saves += 1
            self._unrecorded.add(step)
        return saved

    def _disk_full(self) -> str:
        """"the disk is full: ..." when the checkpoint's filesystem has less room than the newest
        checkpoint takes: in a multi-process job the process that met the full disk may not be
        the one reporting (the others see only a timed-out wait for it)."""
        try:
            free = shutil.disk_usage(self.directory).free
            newest = self.directory / str(self.steps()[-1]) if self.steps() else None
            need = sum(f.stat().st_size for f in newest.rglob("*") if f.is_file()) if newest else 0
        except OSError:
            return ""
        return (f"the disk is full ({free / 1e6:.1f} MB free, the last checkpoint took {need / 1e6:.1f} MB); "
                if free < need else "")

    def _failed(self, step: int, error: Exception) -> None:
        detail = " ".join(str(error).split())
        if len(detail) > 400:  # Orbax nests causes: keep the start (what) and the end (why).
            detail = f"{detail[:150]} ... {detail[-220:]}"
        message = (f"a checkpoint save to {self.directory} failed (noticed at step {step}): "
                   f"{self._disk_full()}{detail}")
        if self.config.checkpoint.required:
            raise CheckpointError(message + "; free space or fix permissions, or set "
                                            "--config.checkpoint.required=False to train on "
                                            "without checkpoints.") from None
        self.log(f"warning: {message}; continuing without it (checkpoint.required=False)")

    def wait(self) -> bool:
        """Blocks until pending asynchronous saves are on disk; surfaces their errors. Returns
        whether they all succeeded (a failure that did not raise was reported as a warning)."""
        try:
            self.manager.wait_until_finished()
            succeeded = True
        except Exception as error:  # noqa: BLE001 - as in save().
            self._failed(self._last_started, error)
            succeeded = False
        self._record_integrity()
        return succeeded

    def close(self) -> None:
        if not self.wait():  # Reported already; Orbax's close() would raise the same error again.
            self.abandon()
            return
        try:
            self.manager.close()
        except Exception as error:  # noqa: BLE001 - as in save().
            self._failed(self._last_started, error)

    def abandon(self) -> None:
        """After a failure: ends Orbax's background work now, so that none of its threads is
        still logging while the interpreter shuts down (which can turn the run's exit code
        into 1). Its own errors would only repeat the one being raised."""
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001
            pass

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, params_target, opt_state_target) -> Restored | None:
        """The newest checkpoint that loads completely, or None when there are none at all."""
        self.wait()
        steps = self.steps()
        for step in reversed(steps):
            try:
                return self.restore(step, params_target, opt_state_target)
            except Exception as error:  # noqa: BLE001 - any failure to read means "damaged",
                if "tree structures do not match" in str(error):  # but another run's state does not.
                    raise CheckpointError(f"checkpoint step {step} in {self.directory} holds other parameters "
                                          f"or optimizer state than this config's; nothing was moved. "
                                          f"{SAME_RUN_FIX}") from error
                self._set_aside(step, error)
        if steps:
            raise CheckpointError(f"none of the checkpoints {steps} in {self.directory} could be "
                                  f"read (moved to {self.directory / 'damaged'}); nothing was "
                                  f"overwritten. Restore them from a backup or start a new workdir.")
        return None

    def restore(self, step: int, params_target, opt_state_target=None) -> Restored:
        """Restores onto the shardings of the targets (ShapeDtypeStructs): any mesh works.
        Without `opt_state_target` only params and meta are read (for branching a run)."""
        self._verify(step)
        items = {"params": ocp.args.StandardRestore(params_target), "meta": ocp.args.JsonRestore()}
        if opt_state_target is not None:
            items["opt_state"] = ocp.args.StandardRestore(opt_state_target)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return Restored(step=step, params=restored["params"], meta=restored["meta"],
                        opt_state=restored.get("opt_state") if opt_state_target is not None else None)

    def _set_aside(self, step: int, error: Exception) -> None:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        source = self.directory / str(step)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.directory / "damaged" / f"{step}-{stamp}"
        if distributed.is_primary():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            if self._integrity_path(step).exists():
                shutil.move(self._integrity_path(step), target / "integrity.json")
        distributed.barrier(f"set_aside_{step}")
        self.log(f"warning: checkpoint of step {step} is damaged ({first_line}); moved it to "
                 f"{target} and trying the previous one")
        self.manager.reload()


def integrity_path(directory: Path, step: int) -> Path:
    """Where the file sizes of checkpoint `step` are recorded."""
    return Path(directory) / "integrity" / f"{step}.json"


def verify_sizes(directory: Path, step: int) -> None:
    """Raises naming the first missing or truncated file of a checkpoint whose file sizes were
    recorded (see `Checkpointer._record_integrity`)."""
    path = integrity_path(directory, step)
    if not path.exists():
        return
    root = Path(directory) / str(step)
    for name, size in json.loads(path.read_text()).items():
        file = root / name
        if not file.exists():
            raise CheckpointError(f"file {file} is missing")
        if file.stat().st_size != size:
            raise CheckpointError(f"file {file} has {file.stat().st_size} bytes, {size} were written")


SAME_RUN_FIX = "Train this config in a new --workdir, or run the config that wrote the checkpoint."


def saved_params(directory: Path, step: int):
    """The tree of a checkpoint's parameters as Orbax's metadata (shape and dtype per leaf)."""
    return ocp.StandardCheckpointHandler().metadata(Path(directory) / str(step) / "params")


def _shapes(tree) -> dict[str, tuple | None]:
    """Each leaf's path and shape, an empty node (a stateless optimizer part, which Orbax's
    metadata keeps as None) as None: two trees with the same map restore onto each other."""
    def empty(x):
        return x is None or (isinstance(x, (tuple, list, dict)) and not x)
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=empty)[0]
    return {jax.tree_util.keystr(path): None if empty(leaf) else tuple(leaf.shape) for path, leaf in leaves}


def _saved_tree(directory: Path, step: int | None, item: str):
    """(step, the metadata tree of a checkpoint's `item`) of `step` or the newest checkpoint;
    None when there is none, or it cannot be read: the restore sets damaged checkpoints aside."""
    from llmjax.rundir import saved_steps  # noqa: PLC0415

    steps = saved_steps(directory)
    if not steps or (step is not None and step not in steps):
        return None
    step = steps[-1] if step is None else step
    if not (Path(directory) / str(step) / item).is_dir():
        return None  # A params-only checkpoint (an import) has no optimizer state.
    try:
        verify_sizes(directory, step)
        saved = ocp.StandardCheckpointHandler().metadata(Path(directory) / str(step) / item)
    except Exception:  # noqa: BLE001 - not this check's call.
        return None
    return step, getattr(saved, "tree", saved)


def check_same_model(directory: Path, step: int | None, params_target, fix: str = SAME_RUN_FIX,
                     ignored: tuple[str, ...] = ()) -> None:
    """Refuses, before anything compiles, a checkpoint (`step`, or the newest) whose parameters
    are not this model's: another shape, or other names (a checkpoint copied from another run,
    an edited config.json). Top-level keys in `ignored` are not compared (a fine-tuned run's
    task head and adapters, when only its model is taken). Reads the checkpoint's metadata
    only."""
    if (found := _saved_tree(directory, step, "params")) is None:
        return
    step, saved = found
    saved = {key: value for key, value in saved.items() if key not in ignored}
    shapes = [_shapes(t) for t in (saved, params_target)]
    problems = ([f"{k} is missing there" for k in shapes[1].keys() - shapes[0].keys()] +
                [f"{k} is there but not in this model" for k in shapes[0].keys() - shapes[1].keys()] +
                [f"{k} has shape {shapes[0][k]} there, {shapes[1][k]} in this model"
                 for k in sorted(shapes[0].keys() & shapes[1].keys()) if shapes[0][k] != shapes[1][k]])
    if problems:
        raise CheckpointError(f"checkpoint step {step} in {directory} holds another model than this "
                              f"config's: {'; '.join(sorted(problems)[:3])}"
                              f"{f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''}. {fix}")


def check_same_optimizer(directory: Path, step: int | None, opt_state_target, fix: str) -> None:
    """Refuses, before anything compiles or is written, a checkpoint whose optimizer state this
    config's optimizer cannot take (another optimizer, clipping switched on or off, other
    parameters frozen): restoring it would fail, and a failed restore reads as damage."""
    if (found := _saved_tree(directory, step, "opt_state")) is None:
        return
    step, saved = found
    if _shapes(saved) != _shapes(ocp.tree.serialize_tree(opt_state_target, keep_empty_nodes=True)):
        raise CheckpointError(f"checkpoint step {step} in {directory} holds the state of another optimizer "
                              f"than this config's (its parts differ), which this run cannot continue. {fix}")


def metadata(step: int, data_step: int, loss: float, config, started: float) -> dict:
    """A checkpoint's record of itself; `started` is the run's `time.perf_counter()` at start."""
    return {"step": step, "data_step": data_step, "loss": loss, "time": time.time(),
            "wall_seconds": time.perf_counter() - started, "llmjax_version": llmjax.__version__,
            "llmjax_commit": source_commit(), "config": config.to_dict()}


def save_host_params(directory: Path, step: int, params: dict, meta: dict,
                     chunk_bytes: int = 16 << 20) -> None:
    """Writes a params-only checkpoint (no optimizer state: `init_from` in params mode reads
    it) from host numpy arrays, typically memory-mapped files, without copying them whole:
    Orbax's numpy handler is told not to deep-copy, arrays are written in chunks of
    `chunk_bytes`, and OCDBT, which gathers a whole item's data in memory before writing it,
    is off. Peak host memory then stays near a few chunks, whatever the model's size."""
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_ocdbt=False)
    manager = ocp.CheckpointManager(Path(directory), item_handlers={
        "params": handler, "meta": ocp.JsonCheckpointHandler()})
    save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=chunk_bytes), params)
    manager.save(step, args=ocp.args.Composite(params=ocp.args.PyTreeSave(params, save_args=save_args),
                                               meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()
    manager.close()


def restore_params(workdir: Path, config, step: int) -> dict:
    """The step's parameters as host numpy arrays, for tools that read a run (export,
    sampling) rather than train it: restored onto the first local device, whatever mesh wrote them."""
    from llmjax.run import abstract_params  # noqa: PLC0415 - model code only once the checks passed.

    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes, _ = abstract_params(config)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)
    checkpointer = Checkpointer(RunDir(workdir).checkpoints, config, read_only=True)
    try:
        return jax.tree.map(np.asarray, checkpointer.restore(step, target).params)
    finally:
        checkpointer.close()
