"""Joining a multi-process (multi-host) job: one JAX process per host, all devices in one mesh.

Every process runs the same program on its own devices; `jax.distributed` connects them so
that jitted steps run as one SPMD program over the global mesh. On CPU the collectives go
through gloo, which is how multi-host code is exercised on a single machine.
"""

from __future__ import annotations

import os
import sys

import jax

from llmjax.errors import FlagError

_joined = False  # Whether this process joined a multi-process job.


def initialize(coordinator_address: str | None, num_processes: int, process_id: int | None,
               auto: bool = False) -> None:
    """Connects this process to the others; a no-op for a single process. Must run before any
    other JAX call touches the devices. `auto` lets JAX read the job from its environment
    (SLURM, TPU VMs, Kubernetes), as under `srun` or on every worker of a TPU slice."""
    if not auto and num_processes <= 1:
        return
    # Cross-process collectives on CPU; accelerator backends ignore this and use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    global _joined
    if auto:
        jax.distributed.initialize(initialization_timeout=300, heartbeat_timeout_seconds=60)
        _joined = True
        return
    if process_id is None or not coordinator_address:
        raise FlagError("--num_processes > 1 needs --coordinator_address=HOST:PORT and "
                         "--process_id (0 for the coordinator) on every process.")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=120,
                               heartbeat_timeout_seconds=20)
    _joined = True


def exit_after_error(code: int) -> None:
    """Ends this process with `code` after an error. In a multi-process job a normal exit would
    wait at JAX's shutdown barrier for the other processes while they wait for this one in the
    next step's collectives: the job would hang. Exiting at once lets them notice the death
    (the coordination service's heartbeat) and stop too."""
    if not _joined:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def is_primary() -> bool:
    """Process 0 writes logs, metrics and run files; the others only compute."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices(name)
