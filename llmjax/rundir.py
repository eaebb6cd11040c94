"""A run directory and everything llmjax keeps in it, behind one object: the resolved config
(config.json), the run's fate (status.json), its tokenizer, the record of an import
(imported.json), and its checkpoints (the Orbax layout under checkpoints/). Commands open a
`RunDir` once and ask it, instead of re-reading files by path.

A workdir is checked before any expensive work and reused only by the same run: rerunning a
command on its own workdir resumes it, so it is accepted again when its saved config describes
the same model, objective, data and seed; training-length, optimizer and checkpoint settings
may change between restarts (e.g. to extend a run).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from functools import cached_property
from pathlib import Path

from ml_collections import ConfigDict

from llmjax.config import apply_overrides, default_config
from llmjax.data.jsonfile import read_json_object
from llmjax.errors import ConfigError, LlmjaxError

IDENTITY_SECTIONS = ("model", "objective", "data", "seed")  # What makes two configs the same run ...
# ... with the batch size (a run's data position is counted in batches: resuming with another
# would skip or repeat data) ...
IDENTITY_KEYS = ("train.global_batch_size",)
# ... but not how the same model is computed or where caches live: a run that ran out of memory
# resumes with rematerialisation.
COMPUTE_KEYS = ("model.remat", "model.attention_impl", "model.scan_unroll", "data.cache_dir")
CONFIG, STATUS, SUMMARY = "config.json", "status.json", "summary.json"
IMPORTED = "imported.json"  # Marks a run directory made by llmjax-import (params only).
TOKENIZER, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"


class WorkdirError(LlmjaxError, ValueError):
    """The workdir cannot be used; the message says why and what to do instead."""


def _flatten(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def config_changes(saved, config) -> dict[str, tuple]:
    """{dotted key: (saved value, new value)} for every field that differs between a saved
    config (a dict or a full ConfigDict; a key the dict lacks counts as its default) and `config`."""
    saved = saved if isinstance(saved, ConfigDict) else config_from_dict(saved)
    old, new = _flatten(saved.to_dict()), _flatten(config.to_dict())
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)}


def config_from_dict(saved: dict):
    """A saved config as a full, locked ConfigDict of its family and objective, with defaults
    for keys it lacks (runs saved before model.family existed are Llama runs)."""
    family = saved.get("model", {}).get("family", "llama")
    objective = saved.get("objective", {}).get("name", "causal_lm")
    return apply_overrides(default_config(family, objective), _flatten(saved))


def identity_changes(changes: dict[str, tuple]) -> dict[str, tuple]:
    """Those of `changes` that make another run (IDENTITY_SECTIONS, IDENTITY_KEYS)."""
    return {k: v for k, v in changes.items()
            if (k.split(".")[0] in IDENTITY_SECTIONS and k not in COMPUTE_KEYS) or k in IDENTITY_KEYS}


def shown_changes(changes: dict[str, tuple], limit: int | None = 5) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:limit])


def saved_steps(directory: Path) -> list[int]:
    """Steps of the complete checkpoints in `directory`, read from the file system alone (no
    manager), so commands can list another run's checkpoints without touching it."""
    if not Path(directory).is_dir():
        return []
    return sorted(int(p.name) for p in Path(directory).iterdir()
                  if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists())


def write_json(path: Path, value, **dump) -> None:
    """Written under a temporary name and renamed: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, **dump))
    tmp.replace(path)


class RunDir:
    def __init__(self, path):
        self.given = str(path)  # As the user wrote it, for messages.
        self.path = Path(path).expanduser().resolve()

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def checkpoints(self) -> Path:
        """The Orbax checkpoint manager's directory."""
        return self.path / "checkpoints"

    def steps(self) -> list[int]:
        return saved_steps(self.checkpoints)

    def resolve_step(self, step: int | None) -> int:
        """`step`, checked to exist, or the run's latest."""
        steps = self.steps()
        if not steps:
            raise WorkdirError(f"{self.given} has no checkpoints; train it first or give another --workdir.")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise WorkdirError(f"--step {step}: {self.given} has no checkpoint of that step; it has {steps}.")
        return step

    # The config.
    def check(self, config) -> dict[str, tuple]:
        """The config changes against a previous run in this directory ({} for a new one).
        Fails unless the directory can hold this run, trained to `config.train.steps`, without
        losing a step it has; leaves nothing behind. The trainer and the commands that start
        it (llmjax-launch, llmjax-sweep) all ask this, so they refuse the same runs."""
        workdir, path = self.path, self.given
        if workdir.exists() and not workdir.is_dir():
            raise WorkdirError(f"--workdir {path}: exists and is not a directory; choose another path.")
        from llmjax.data.dataset import is_prepared  # noqa: PLC0415 - the data modules import this one's peers.

        if is_prepared(str(workdir)):
            raise WorkdirError(f"--workdir {path}: holds a dataset prepared by llmjax-prepare, not a run; "
                               f"train on it with --config.data.source={workdir} and choose another --workdir.")
        if self.is_import:  # Its checkpoint has no optimizer state to resume.
            raise WorkdirError(f"--workdir {path}: holds an imported model; train a new run from it "
                               f"with --workdir NEW --config.checkpoint.init_from={workdir}.")
        if self.checkpoints.exists() and not self.checkpoints.is_dir():
            raise WorkdirError(f"--workdir {path}: {self.checkpoints} is a file, where the run keeps "
                               f"its checkpoints; move it away or choose a new --workdir.")
        changes = self.changes(config)
        if conflicts := identity_changes(changes):
            raise WorkdirError(f"--workdir {path}: holds a run with a different model/data/seed/batch size "
                               f"({shown_changes(conflicts)}); choose a new --workdir, or start from that run with "
                               f"--config.checkpoint.init_from={workdir}.")
        if (saved := self.steps()) and saved[-1] > config.train.steps:  # Training would not resume it.
            raise WorkdirError(f"config.train.steps={config.train.steps!r}: the run in {path} has reached step "
                               f"{saved[-1]} already; give train.steps >= {saved[-1]} to continue it, or train a "
                               f"shorter run in a new --workdir.")
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
        return changes

    def changes(self, config) -> dict[str, tuple]:
        """`config_changes` of `config` against the run saved here ({} for a new directory). What
        a task's data fills in when the run starts is not a change where `config` leaves it
        empty (its labels, and the examples' fingerprint, also where an older run saved none);
        nor are task files named relative to here that the run saved as absolute paths."""
        if not (self.path / CONFIG).exists():
            return {}
        from llmjax.tasks.files import absolute  # noqa: PLC0415 - the task layer imports this module's peers.

        changes = config_changes(self.config, config)
        o = config.objective
        if "labels" in o and not o.labels:
            changes.pop("objective.labels", None)
        if "task_fingerprint" in o and not (o.task_fingerprint and self.config.objective.task_fingerprint):
            changes.pop("objective.task_fingerprint", None)
        for key in ("objective.task_files", "objective.val_files"):
            if key in changes and absolute(changes[key][0]) == absolute(changes[key][1]):
                changes.pop(key)
        return changes

    @cached_property
    def config(self):
        """The saved config.json as a full, locked ConfigDict (defaults for any key an older
        run did not save)."""
        path = self.path / CONFIG
        if not path.exists():
            raise WorkdirError(f"{self.given} has no {CONFIG}; give the --workdir of an llmjax run.")
        fix = ("it was damaged or edited: restore it (each checkpoint's meta holds the config it was "
               "saved with), or choose a new --workdir.")
        saved = read_json_object(path, WorkdirError, fix)
        try:
            return config_from_dict(saved)
        except (ConfigError, AttributeError, TypeError) as error:
            raise WorkdirError(f"{path} is not a config this llmjax can read ({error}); {fix}") from None

    def write_config(self, config) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / CONFIG, config.to_dict(), indent=2, sort_keys=True)
        self.__dict__.pop("config", None)

    # Status and summary.
    def write_status(self, state: str, step: int, error: str | None = None) -> None:
        """status.json: running | done | failed | preempted, the last step, and for a failure
        its last error line; what sweeps and reports read to know a run's fate without
        parsing logs."""
        write_json(self.path / STATUS, {"state": state, "step": step, "time": time.time()}
                    | ({"error": error} if error else {}))

    def status(self) -> dict:
        """status.json's state and step; "damaged" where it cannot be read (cut short, edited):
        the run's checkpoints, not this file, say where a rerun resumes."""
        path = self.path / STATUS
        if not path.exists():
            return {"state": "new", "step": 0}
        try:
            status = json.loads(path.read_text())
        except (ValueError, OSError):
            status = None
        if not (isinstance(status, dict) and isinstance(status.get("state"), str) and isinstance(status.get("step"), int)):
            return {"state": "damaged", "step": 0, "error": f"{path} cannot be read"}
        return status

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / SUMMARY, summary, indent=2)

    # Tokenizer and import record.
    @cached_property
    def tokenizer(self):
        """The run's tokenizer.json as a `tokenizers.Tokenizer`."""
        from tokenizers import Tokenizer  # noqa: PLC0415 - only commands that read text need it.

        path = self.path / TOKENIZER
        if not path.exists():
            raise WorkdirError(f"{self.given} has no {TOKENIZER}; runs write it when training starts "
                               f"(rerun llmjax-train on this workdir with a newer llmjax to add it).")
        try:
            return Tokenizer.from_file(str(path))
        except Exception as error:  # noqa: BLE001 - the tokenizers library raises bare Exceptions.
            raise WorkdirError(f"{path} cannot be read ({' '.join(str(error).split())}); it is damaged: "
                               f"restore it (the run's dataset has the same tokenizer.json).") from None

    @property
    def is_import(self) -> bool:
        return (self.path / IMPORTED).exists()

    @cached_property
    def imported(self) -> dict | None:
        """{"source": HF directory, "config": its config.json, "dtype": its tensors' dtype}, or
        None for a run trained by llmjax."""
        path = self.path / IMPORTED
        return json.loads(path.read_text()) if path.exists() else None

    def write_imported(self, source: Path, hf_config: dict, dtype: str) -> None:
        write_json(self.path / IMPORTED, {"source": str(source), "config": hf_config, "dtype": dtype},
                    indent=2)
        self.__dict__.pop("imported", None)

    @cached_property
    def tokenizer_config(self) -> dict:
        """The HF tokenizer_config.json that goes with the run's tokenizer: the run's own (an
        import), or the one beside `data.tokenizer` (a run continued from an import); {} for a
        tokenizer llmjax trained."""
        tokenizer_file = self.config.data.tokenizer
        for directory in (self.path, *([Path(tokenizer_file).parent] if tokenizer_file else [])):
            if (directory / TOKENIZER_CONFIG).exists():
                return json.loads((directory / TOKENIZER_CONFIG).read_text())
        return {}
