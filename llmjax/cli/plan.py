"""`llmjax-plan --config C --target h100 [--devices N] [--config.mesh.ici.fsdp=64 ...]`.

Exits 0 when the run fits the target's memory, 3 when it does not, so a launch script can
refuse to submit a job that would die of out-of-memory.
"""

from __future__ import annotations

import math
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from llmjax.cli.app import load_config, run as run_app
from llmjax.cpu_runtime import with_fake_devices
from llmjax.errors import FlagError
from llmjax.plan import TARGETS

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a get_config() module).")
_TARGET = flags.DEFINE_enum("target", "h100", list(TARGETS), "Accelerator to plan for.")
_DEVICES = flags.DEFINE_integer("devices", None, "Devices in the job (default: the mesh's size).")
EXIT_DOES_NOT_FIT = 3


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = load_config(_CONFIG)
    from llmjax.config import MESH_AXES  # noqa: PLC0415 - imports no JAX.

    if _DEVICES.value is not None and _DEVICES.value < 1:
        raise FlagError(f"--devices={_DEVICES.value}: give the job's number of devices, 1 or more.")
    sizes = [config.mesh.ici[a] * config.mesh.dcn[a] for a in MESH_AXES]
    devices = _DEVICES.value or (math.prod(sizes) if min(sizes) > 0 else None)
    if devices is None:
        raise FlagError("the mesh has a -1 axis; give the job's size with --devices=N.")
    # Fake CPU devices stand in for the target's; this must precede JAX's first import.
    os.environ["XLA_FLAGS"] = with_fake_devices(os.environ.get("XLA_FLAGS", ""), devices)
    os.environ["JAX_PLATFORMS"] = "cpu"
    from llmjax.config import validate  # noqa: PLC0415
    from llmjax.plan import plan  # noqa: PLC0415

    validate(config, devices, math.prod(config.mesh.dcn[a] for a in MESH_AXES))
    result = plan(config, _TARGET.value)
    print(result.report())
    if not result.fits:
        print(f"error: needs {result.total_bytes / 1e9:.1f} GB per device, the {_TARGET.value} has "
              f"{result.memory_bytes / 1e9:.0f} GB; raise mesh.ici.fsdp, "
              + ("" if config.model.get("remat") in (None, "full") else "enable model.remat=full, ")
              + "or lower train.global_batch_size / data.seq_len.", file=sys.stderr)
        sys.exit(EXIT_DOES_NOT_FIT)


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
