"""`llmjax-sweep EXPERIMENT --workdir DIR [--dry_run] [--parallel N] [--cluster local|slurm]
[--config.KEY=VALUE ...]`: the overrides apply to every run of the sweep, as they would to
`llmjax-train --config EXPERIMENT` (e.g. shorter runs: --config.train.steps=50)."""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from llmjax.cli.app import config_overrides, run as run_app
from llmjax.errors import EXIT_PREEMPTED, FlagError

_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory; runs go to WORKDIR/runs/NAME.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the runs (and the SLURM script) only.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Local runs at a time.")
_CLUSTER = flags.DEFINE_enum("cluster", "local", ["local", "slurm"], "Where the runs execute.")
_RUN_INDEX = flags.DEFINE_integer("run_index", None, "Run only this run (SLURM array tasks).")
_PARTITION = flags.DEFINE_string("partition", None, "SLURM partition.")
_ACCOUNT = flags.DEFINE_string("account", None, "SLURM account.")
_TIME = flags.DEFINE_string("time", "24:00:00", "SLURM time limit per run.")
_GPUS = flags.DEFINE_integer("gpus", 0, "GPUs per run (SLURM).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The experiment file; set from the EXPERIMENT argument, so that --config.KEY=VALUE "
    "overrides are parsed and typed as llmjax-train parses them.")
flags.mark_flags_as_required(["workdir"])


def main(argv) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: llmjax-sweep EXPERIMENT.py --workdir DIR [flags]")
    import jax  # noqa: PLC0415 - only after flags, so --help is instant.

    from llmjax.sweep import launch, manifest  # noqa: PLC0415
    from llmjax.sweep.expand import plan  # noqa: PLC0415

    if _PARALLEL.value < 1:
        raise FlagError(f"--parallel={_PARALLEL.value}: give the number of runs to train at a time, 1 or more.")
    experiment, sweep_dir = argv[1], Path(_WORKDIR.value).expanduser().resolve()
    overrides = config_overrides(sys.argv[1:], _CONFIG.value)
    base, runs, sweep = plan(experiment, jax.device_count(), overrides, manifest.existing(sweep_dir))
    if _RUN_INDEX.value is not None:
        if not 0 <= _RUN_INDEX.value < len(runs):
            raise FlagError(f"--run_index={_RUN_INDEX.value}: the sweep has {len(runs)} runs.")
        runs = [runs[_RUN_INDEX.value]]
    if _DRY_RUN.value:
        print(f"base config of {experiment}:\n{base}")
    if _DRY_RUN.value or _CLUSTER.value == "local":
        print(f"{len(runs)} runs of {experiment} in {sweep_dir}/runs (each: the base config with):")
        for run in runs:
            print(f"  {run.name:40} {run.overrides}")
    changes = launch.check_workdirs(sweep_dir, runs, local=_CLUSTER.value == "local")
    slurm = {"partition": _PARTITION.value, "account": _ACCOUNT.value, "time": _TIME.value,
             "gpus": _GPUS.value, "config_args": [f"--config.{k}={v}" for k, v in overrides.items()]}
    if _CLUSTER.value == "slurm":
        script = launch.slurm_script(experiment, sweep_dir, runs, slurm)
        if _DRY_RUN.value:
            print(script)
            return
        manifest.write(sweep_dir, experiment, runs, sweep)
        print(launch.submit_slurm(sweep_dir, script))
        return
    if _DRY_RUN.value:
        return
    if _RUN_INDEX.value is None:
        manifest.write(sweep_dir, experiment, runs, sweep)
    states = launch.run_local(experiment, sweep_dir, runs, _PARALLEL.value, changes,
                              log=lambda line: print(line, flush=True))
    counts = {s: list(states.values()).count(s) for s in dict.fromkeys(states.values())}
    print("sweep: " + ", ".join(f"{n} {s}" for s, n in counts.items()), flush=True)
    if "failed" in states.values():
        sys.exit(1)
    if set(states.values()) - {"done"}:  # Stopped by a signal: rerunning the command goes on.
        sys.exit(EXIT_PREEMPTED)


def run() -> None:
    # The experiment argument doubles as --config, so the overrides apply to its config.
    positional = [arg for arg in sys.argv[1:] if arg.endswith(".py") and not arg.startswith("-")]
    if positional and not any(arg.startswith("--config=") for arg in sys.argv):
        sys.argv.insert(1, f"--config={positional[0]}")
    run_app(main)


if __name__ == "__main__":
    run()
