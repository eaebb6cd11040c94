"""`llmjax-train --config configs/default.py --workdir runs/demo [--config.a.b=value ...]`."""

from __future__ import annotations


from absl import app, flags
from ml_collections import config_flags

from llmjax.cli.app import load_config, run as run_app
from llmjax.errors import FlagError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a get_config() module).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's outputs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (0 coordinates).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_AUTO_DISTRIBUTED = flags.DEFINE_bool("auto_distributed", False,
                                      "Join a multi-process job described by the environment "
                                      "(SLURM under srun, TPU VM workers); set by llmjax-launch.")
_PRINT_SHARDING = flags.DEFINE_bool("print_sharding", False,
                                    "Print each parameter's shape, logical axes, mesh sharding "
                                    "and bytes per device, then exit.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    processes, process = _NUM_PROCESSES.value, _PROCESS_ID.value
    if processes < 1 or (process is not None and not 0 <= process < processes):
        raise FlagError(f"--num_processes={processes} --process_id={process}: a job of N processes gives "
                        f"each one an id in 0..N-1 (llmjax-launch starts them so).")
    config = load_config(_CONFIG)
    import jax  # noqa: PLC0415 - flags are parsed first so that --help is quick.

    from llmjax.data.dataset import default_cache_dir  # noqa: PLC0415
    from llmjax.parallel import distributed  # noqa: PLC0415
    from llmjax.train.loop import train  # noqa: PLC0415

    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           auto=_AUTO_DISTRIBUTED.value)

    # A restarted or resumed run loads its compiled steps instead of compiling them again; every
    # executable is kept, also those compiled faster than JAX's default threshold of 1 s.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(default_cache_dir() / "xla"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    train(config, _WORKDIR.value, print_sharding=_PRINT_SHARDING.value)


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
