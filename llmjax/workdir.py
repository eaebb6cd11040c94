"""The run directory: checked before any expensive work, reused only by the same run.

Rerunning a command on its own workdir resumes it, so a workdir is accepted again when its
saved config describes the same model, data and seed; training-length, optimizer and
checkpoint settings may change between restarts (e.g. to extend a run).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from llmjax.config import apply_overrides, default_config

IDENTITY_SECTIONS = ("model", "data", "seed")  # What makes two configs the same run.
IMPORTED = "imported.json"  # Marks a run directory made by llmjax-import (params only).


class WorkdirError(ValueError):
    """The workdir cannot be used; the message says why and what to do instead."""


def _flatten(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def config_changes(saved: dict, config) -> dict[str, tuple]:
    """{dotted key: (saved value, new value)} for every field that differs."""
    old, new = _flatten(saved), _flatten(config.to_dict())
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)}


def check_workdir(path: str, config) -> tuple[Path, dict[str, tuple]]:
    """(resolved workdir, config changes against a previous run in it). Fails unless `path`
    can hold this run; leaves nothing behind."""
    workdir = Path(path).expanduser().resolve()
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {path}: exists and is not a directory; choose another path.")
    if (workdir / IMPORTED).exists():  # Its checkpoint has no optimizer state to resume.
        raise WorkdirError(f"--workdir {path}: holds an imported model; train a new run from it "
                           f"with --workdir NEW --config.checkpoint.init_from={workdir}.")
    changes = {}
    saved = workdir / "config.json"
    if saved.exists():
        changes = config_changes(json.loads(saved.read_text()), config)
        conflicts = {k: v for k, v in changes.items() if k.split(".")[0] in IDENTITY_SECTIONS}
        if conflicts:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(conflicts.items())[:5])
            raise WorkdirError(f"--workdir {path}: holds a run with a different model/data/seed "
                               f"({shown}); choose a new --workdir, or start from that run with "
                               f"--config.checkpoint.init_from={workdir}.")
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
    return workdir, changes


def write_config(workdir: Path, config) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / "config.json.tmp"
    tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    tmp.replace(workdir / "config.json")


def read_config(workdir: Path):
    """The run's saved config.json as a full, locked ConfigDict (defaults for any key an older
    run did not save)."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise WorkdirError(f"{workdir} has no config.json; give the --workdir of an llmjax run.")
    return apply_overrides(default_config(), _flatten(json.loads(path.read_text())))


def write_status(workdir: Path, state: str, step: int, error: str | None = None) -> None:
    """status.json: running | done | failed | preempted, the last step, and for a failure its
    last error line; what sweeps and reports read to know a run's fate without parsing logs."""
    status = {"state": state, "step": step, "time": time.time()}
    if error:
        status["error"] = error
    tmp = workdir / "status.json.tmp"
    tmp.write_text(json.dumps(status))
    tmp.replace(workdir / "status.json")


def read_status(workdir: Path) -> dict:
    path = Path(workdir) / "status.json"
    return json.loads(path.read_text()) if path.exists() else {"state": "new", "step": 0}
