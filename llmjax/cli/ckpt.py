"""`llmjax-ckpt list WORKDIR` and `llmjax-ckpt inspect WORKDIR [--step S]`: what a run has saved.
`--workdir=WORKDIR` in place of WORKDIR, as every other llmjax command takes it, works too.

Reads only metadata and the small JSON item, never the arrays, so it is instant even for
large models and safe to run beside a training job. A checkpoint whose metadata cannot be read
or whose files are not those its save recorded is what a resuming run would set aside: `list`
marks it and goes on, `inspect` refuses it naming the newest intact step instead.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

from absl import app, flags, logging

from llmjax.cli.app import run as run_app
from llmjax.errors import FlagError, LlmjaxError
from llmjax.rundir import RunDir, saved_steps

_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for `inspect` (default: the latest).")
_WORKDIR = flags.DEFINE_string("workdir", "", "The run's workdir, if not given after the command.")


class Damaged(LlmjaxError):
    """What is wrong with one checkpoint."""


def _meta(step_dir: Path) -> dict:
    path = step_dir / "meta" / "metadata"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise Damaged(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Damaged(f"{path} cannot be read ({error})") from None
    if not isinstance(meta, dict):
        raise Damaged(f"{path} holds no JSON object")
    return meta


def _check(directory: Path, step: int):
    """(the checkpoint's meta, its params' metadata tree); raises Damaged saying what is wrong.
    The same checks as a resuming run's (file sizes against the save's record), short of
    reading the arrays."""
    logging.set_verbosity(logging.ERROR)  # Orbax warns about optional metadata files.
    from llmjax.checkpoint import integrity_path, saved_params, verify_sizes  # noqa: PLC0415 - JAX, Orbax.

    meta = _meta(directory / str(step))
    try:
        verify_sizes(directory, step)
    except LlmjaxError as error:
        raise Damaged(str(error)) from None
    except (OSError, ValueError, AttributeError) as error:  # JSON that is no {file: size} map.
        raise Damaged(f"its record of file sizes {integrity_path(directory, step)} cannot be read "
                      f"({error})") from None
    try:
        saved = saved_params(directory, step)
    except Exception as error:  # noqa: BLE001 - whatever Orbax raises, the params cannot be read.
        raise Damaged(f"its params cannot be read ({' '.join(str(error).split())[:200]})") from None
    return meta, getattr(saved, "tree", saved)


def _field(meta: dict, key: str, spec: str = "") -> str:
    """A metadata value as `spec` formats it, "?" if absent or of another type (hand-edited)."""
    try:
        return format(meta[key], spec)
    except (KeyError, TypeError, ValueError):
        return "?"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if num_bytes < 1024 or unit == "TB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024


def list_checkpoints(directory: Path) -> str:
    rows = [f"{'step':>8}  {'data_step':>9}  {'loss':>8}  {'size':>9}  {'saved':19}  commit"]
    for step in saved_steps(directory):
        try:
            meta = _check(directory, step)[0]
        except Damaged as error:
            rows.append(f"{step:>8}  damaged: {error}")
            continue
        try:
            saved = datetime.datetime.fromtimestamp(meta["time"]).strftime("%Y-%m-%d %H:%M:%S")
        except (KeyError, TypeError, ValueError, OverflowError, OSError):
            saved = "?"
        rows.append(f"{step:>8}  {_field(meta, 'data_step'):>9}  {_field(meta, 'loss', '.4f'):>8}  "
                    f"{_human(_size(directory / str(step))):>9}  {saved:19}  {_field(meta, 'llmjax_commit')}")
    damaged = directory / "damaged"
    if damaged.is_dir() and any(damaged.iterdir()):
        rows.append(f"set aside as damaged: {', '.join(sorted(p.name for p in damaged.iterdir()))}")
    return "\n".join(rows)


def _intact(directory: Path, step: int) -> bool:
    try:
        _check(directory, step)
    except Damaged:
        return False
    return True


def inspect_checkpoint(directory: Path, step: int) -> str:
    import jax  # noqa: PLC0415 - loaded once a command runs, not for a usage error.

    from llmjax.parallel.describe import param_name  # noqa: PLC0415

    step_dir = directory / str(step)
    try:
        meta, tree = _check(directory, step)
    except Damaged as error:
        intact = next((s for s in reversed(saved_steps(directory)) if s != step and _intact(directory, s)), None)
        resume = (f"; a resumed run sets step {step} aside and continues from step {intact}"
                  if intact is not None and intact < step else "")
        raise Damaged(f"checkpoint step {step} in {directory} is damaged: {error}. "
                      + (f"Inspect the newest intact one with --step {intact}{resume}." if intact is not None else
                         "No other checkpoint of the run is intact: restore them from a backup.")) from None
    wall = _field(meta, "wall_seconds", ".1f")
    lines = [f"checkpoint {step_dir}",
             f"step {meta.get('step')}, data step {meta.get('data_step')}, loss {meta.get('loss')}, "
             f"skipped steps {meta.get('skipped_steps')}, llmjax {meta.get('llmjax_version')} "
             f"({meta.get('llmjax_commit')}), size {_human(_size(step_dir))}"
             + (f", saved {wall} s into the run" if wall != "?" else ""), "params:"]
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = param_name(path)
        count = math.prod(leaf.shape)
        total += count
        lines.append(f"  {name:48} {str(tuple(leaf.shape)):22} {str(leaf.dtype):8} {count:>12,}")
    lines.append(f"  total parameters: {total:,}")
    return "\n".join(lines)


def main(argv) -> None:
    given = argv[2:] + ([_WORKDIR.value] if _WORKDIR.value else [])
    if len(argv) < 2 or argv[1] not in ("list", "inspect") or len(given) != 1:
        raise app.UsageError("usage: llmjax-ckpt list|inspect WORKDIR [--step S] (or --workdir=WORKDIR)")
    directory = RunDir(given[0]).checkpoints
    if not directory.is_dir():
        raise FlagError(f"{directory} does not exist; give the workdir of a training run.")
    steps = saved_steps(directory)
    if argv[1] == "list":
        print(list_checkpoints(directory))
        return
    step = _STEP.value if _STEP.value is not None else (steps[-1] if steps else None)
    if step not in steps:
        raise FlagError(f"no checkpoint of step {step} in {directory}; it has {steps}.")
    print(inspect_checkpoint(directory, step))


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
