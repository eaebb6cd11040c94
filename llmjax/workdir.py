"""The run directory: checked before any expensive work, and never clobbered."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class WorkdirError(ValueError):
    """The workdir cannot be used; the message says why and what to do instead."""


RUN_FILES = ("metrics.jsonl", "config.json")


def check_workdir(path: str) -> Path:
    """Fails unless `path` can hold a new run. Leaves nothing behind: the run's first file is
    written only after every other check has passed and the steps have compiled."""
    workdir = Path(path).expanduser().resolve()
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {path}: exists and is not a directory; choose another path.")
    existing = [name for name in RUN_FILES if (workdir / name).exists()]
    if existing:
        raise WorkdirError(f"--workdir {path}: already holds a run ({', '.join(existing)}); "
                           f"choose a new --workdir or move the old run away.")
    probe = workdir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise WorkdirError(f"--workdir {path}: {probe} is a file, not a directory; choose "
                           f"another path.")
    try:  # A real write, not os.access: root passes access checks on read-only filesystems.
        os.rmdir(tempfile.mkdtemp(prefix=".llmjax-probe-", dir=probe))
    except OSError as error:
        raise WorkdirError(f"--workdir {path}: cannot write in {probe} ({error.strerror}); "
                           f"choose a directory you can write to.") from None
    return workdir


def write_config(workdir: Path, config) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
