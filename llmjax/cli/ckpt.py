"""`llmjax-ckpt list WORKDIR` and `llmjax-ckpt inspect WORKDIR [--step S]`: what a run has saved.

Reads only metadata and the small JSON item, never the arrays, so it is instant even for
large models and safe to run beside a training job.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

from absl import app, flags, logging

from llmjax.cli.app import run as run_app
from llmjax.errors import FlagError
from llmjax.rundir import RunDir, saved_steps

_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for `inspect` (default: the latest).")


def _meta(step_dir: Path) -> dict:
    path = step_dir / "meta" / "metadata"
    return json.loads(path.read_text()) if path.exists() else {}


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
        meta = _meta(directory / str(step))
        saved = datetime.datetime.fromtimestamp(meta["time"]).strftime("%Y-%m-%d %H:%M:%S") \
            if "time" in meta else "?"
        rows.append(f"{step:>8}  {meta.get('data_step', '?'):>9}  {meta.get('loss', float('nan')):>8.4f}  "
                    f"{_human(_size(directory / str(step))):>9}  {saved:19}  {meta.get('llmjax_commit', '?')}")
    damaged = directory / "damaged"
    if damaged.is_dir() and any(damaged.iterdir()):
        rows.append(f"set aside as damaged: {', '.join(sorted(p.name for p in damaged.iterdir()))}")
    return "\n".join(rows)


def inspect_checkpoint(directory: Path, step: int) -> str:
    logging.set_verbosity(logging.ERROR)  # Orbax warns about optional metadata files.
    import jax  # noqa: PLC0415 - only inspect needs JAX and Orbax.
    import orbax.checkpoint as ocp  # noqa: PLC0415

    from llmjax.parallel.describe import param_name  # noqa: PLC0415

    step_dir = directory / str(step)
    meta = _meta(step_dir)
    tree = ocp.StandardCheckpointer().metadata(step_dir / "params").item_metadata.tree
    lines = [f"checkpoint {step_dir}",
             f"step {meta.get('step')}, data step {meta.get('data_step')}, loss {meta.get('loss')}, "
             f"skipped steps {meta.get('skipped_steps')}, llmjax {meta.get('llmjax_version')} "
             f"({meta.get('llmjax_commit')}), size {_human(_size(step_dir))}"
             + (f", saved {meta['wall_seconds']:.1f} s into the run" if "wall_seconds" in meta else ""), "params:"]
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = param_name(path)
        count = math.prod(leaf.shape)
        total += count
        lines.append(f"  {name:48} {str(tuple(leaf.shape)):22} {str(leaf.dtype):8} {count:>12,}")
    lines.append(f"  total parameters: {total:,}")
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) != 3 or argv[1] not in ("list", "inspect"):
        raise app.UsageError("usage: llmjax-ckpt list|inspect WORKDIR [--step S]")
    directory = RunDir(argv[2]).checkpoints
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
