"""`llmjax-launch --config C --workdir W --cluster local|slurm|tpu [flags] [--config.a.b=v ...]`.

One llmjax-train process per host (or, locally, per group of devices), joined by
`jax.distributed`: `local` starts them on this machine, `slurm` writes (and submits) an sbatch
script whose `srun` step starts one per task and lets JAX read the job from SLURM's
environment, `tpu` runs the same command on every worker of a TPU VM slice.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from llmjax import child_processes
from llmjax.cli.app import config_arguments, load_config, run as run_app
from llmjax.cpu_runtime import with_fake_devices
from llmjax.errors import FlagError
from llmjax.slurm import sbatch_script

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a get_config() module).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (shared by all processes).")
_CLUSTER = flags.DEFINE_enum("cluster", "local", ["local", "slurm", "tpu"], "Where to run.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the script or command instead of running it.")
_PROCESSES = flags.DEFINE_integer("num_processes", 2, "local: processes to start.")
_DEVICES = flags.DEFINE_integer("devices_per_process", 0,
                                "local, CPU only: fake devices per process (0: real devices).")
_NODES = flags.DEFINE_integer("nodes", 1, "slurm: nodes.")
_TASKS = flags.DEFINE_integer("tasks_per_node", 1, "slurm: processes per node (1 per host, or 1 per GPU).")
_GPUS = flags.DEFINE_integer("gpus_per_node", 0, "slurm: GPUs per node.")
_TIME = flags.DEFINE_string("time", "24:00:00", "slurm: time limit.")
_PARTITION = flags.DEFINE_string("partition", None, "slurm: partition.")
_ACCOUNT = flags.DEFINE_string("account", None, "slurm: account.")
_TPU = flags.DEFINE_string("tpu_name", None, "tpu: the TPU VM's name.")
_ZONE = flags.DEFINE_string("zone", None, "tpu: its zone.")
_PROJECT = flags.DEFINE_string("project", None, "tpu: its project (default: gcloud's).")
flags.mark_flags_as_required(["config", "workdir"])


def config_args(argv_all: list[str]) -> list[str]:
    """The --config file and overrides, in every form absl accepts (`config_arguments`), exactly
    as given: what each process needs to build the config this launcher validated."""
    return [token for _, tokens in config_arguments(argv_all) for token in tokens]


def train_args(workdir: Path, passthrough: list[str]) -> list[str]:
    return ["-m", "llmjax.cli.train", *passthrough, f"--workdir={workdir}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch_local(workdir: Path, passthrough: list[str], processes: int, devices: int) -> int:
    """Starts the processes, passes SIGTERM/SIGINT on to all of them (and, if this launcher is
    killed, the kernel sends them SIGTERM: `child_processes`), and returns the first failing
    exit code (EXIT_PREEMPTED when all stopped cleanly on a signal)."""
    env = dict(os.environ)
    if devices:
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=with_fake_devices(env.get("XLA_FLAGS", ""), devices))
    port = free_port()
    children = [child_processes.start([sys.executable, *train_args(workdir, passthrough),
                                       f"--num_processes={processes}", f"--process_id={i}",
                                       f"--coordinator_address=localhost:{port}"], env=env)
                for i in range(processes)]

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [child.returncode for child in children]
    return next((code for code in codes if code != 0), 0)


def slurm_script(workdir: Path, passthrough: list[str]) -> str:
    directives = [("job-name", "llmjax"), ("nodes", _NODES.value), ("ntasks-per-node", _TASKS.value),
                  ("time", _TIME.value), ("output", f"{workdir}/slurm-%j.out"), ("signal", "TERM@120"),
                  ("gpus-per-node", _GPUS.value), ("partition", _PARTITION.value),
                  ("account", _ACCOUNT.value)]
    command = [sys.executable, *train_args(workdir, passthrough), "--auto_distributed"]
    return sbatch_script(directives, [f"cd {shlex.quote(os.getcwd())}",
                                      "# One task per process; JAX reads coordinator, count and rank from SLURM.",
                                      "srun --kill-on-bad-exit=1 " + shlex.join(command)])


def tpu_command(workdir: Path, passthrough: list[str]) -> list[str]:
    remote = shlex.join([".venv/bin/python", *train_args(workdir, passthrough), "--auto_distributed"])
    project = [f"--project={_PROJECT.value}"] if _PROJECT.value else []
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", _TPU.value, f"--zone={_ZONE.value}",
            *project, "--worker=all", f"--command=cd {shlex.quote(os.getcwd())} && {remote}"]


def _check(config, workdir: Path) -> None:
    """What every process would find wrong, found once, here, before any process starts or a
    job is queued: the flags, the config (with the mesh where the device count is known) and
    the workdir, and for a local job whether another training holds it now."""
    from llmjax import config as config_lib  # noqa: PLC0415 - only after flags, so --help is instant.
    from llmjax import workdir_lock  # noqa: PLC0415
    from llmjax.rundir import RunDir  # noqa: PLC0415

    for name, flag in (("num_processes", _PROCESSES), ("nodes", _NODES), ("tasks_per_node", _TASKS)):
        if flag.value < 1:
            raise FlagError(f"--{name}={flag.value}: must be at least 1.")
    for name, flag in (("devices_per_process", _DEVICES), ("gpus_per_node", _GPUS)):
        if flag.value < 0:
            raise FlagError(f"--{name}={flag.value}: must be 0 or more.")
    processes, devices = {"local": (_PROCESSES.value, _PROCESSES.value * _DEVICES.value),
                          "slurm": (_NODES.value * _TASKS.value, _NODES.value * _GPUS.value)}.get(_CLUSTER.value, (1, 0))
    if devices:
        config_lib.validate(config, devices, processes)
    else:
        config_lib.check_fields(config)
    RunDir(workdir).check(config)
    if _CLUSTER.value == "local":  # A job queued elsewhere may start once the running one ends.
        workdir_lock.check_free(RunDir(workdir))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = load_config(_CONFIG)
    workdir = Path(_WORKDIR.value).expanduser().resolve()
    _check(config, workdir)
    passthrough = config_args(sys.argv[1:])
    if _CLUSTER.value == "local":
        if _DRY_RUN.value:
            print(shlex.join([sys.executable, *train_args(workdir, passthrough)]) +
                  f" --num_processes={_PROCESSES.value} --process_id=I --coordinator_address=localhost:PORT")
            return
        sys.exit(launch_local(workdir, passthrough, _PROCESSES.value, _DEVICES.value))
    if _CLUSTER.value == "slurm":
        script = slurm_script(workdir, passthrough)
        if _DRY_RUN.value:
            print(script, end="")
            return
        if not shutil.which("sbatch"):
            raise FlagError("sbatch not found; run this on a SLURM login node or use --dry_run.")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "launch.sbatch").write_text(script)
        result = subprocess.run(["sbatch", str(workdir / "launch.sbatch")], capture_output=True, text=True)
        print(result.stdout.strip() or result.stderr.strip())
        sys.exit(result.returncode)
    if not (_TPU.value and _ZONE.value):
        raise FlagError("--cluster=tpu needs --tpu_name and --zone.")
    command = tpu_command(workdir, passthrough)
    if _DRY_RUN.value:
        print(shlex.join(command))
        return
    if not shutil.which("gcloud"):
        raise FlagError("gcloud not found; install the Google Cloud CLI or use --dry_run.")
    sys.exit(subprocess.run(command).returncode)


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
