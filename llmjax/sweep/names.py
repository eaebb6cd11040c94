"""Run names: what distinguishes a run from the others, short enough for any filesystem, and
kept across relaunches that grow the sweep.

A name is made of the keys whose values differ between the planned runs
(`learning_rate=0.001-seed=1`), so adding a seed or a grid value would rename every run and
train them again in new directories. Relaunched into a directory that already holds a sweep,
a planned run therefore takes the name of the run in `sweep.json` that has the same values of
the keys the sweep sets (a key one of them leaves out counts as the base config's value);
settings given on the command line (--config.train.steps=...) apply to every run and do not
make another run. A new run never takes a name that is in use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Callable

from llmjax.sweep import SweepError

MAX_LENGTH = 120  # Far below the 255 bytes of a file name, leaving room for what is beside it.
_DIGEST = 8
MISSING = object()  # The value of a key the config does not have.


@dataclasses.dataclass(frozen=True)
class Existing:
    """What a sweep directory's `sweep.json` records: its runs, each {"name", "overrides",
    "swept": the keys its sweep set}, and their names, which no other run may take."""
    runs: list[dict]
    taken: set[str]


@dataclasses.dataclass(frozen=True)
class Planned:
    name: str  # Made from the plan alone.
    overrides: dict
    swept: frozenset  # The keys of `overrides` that the sweep sets (not the command line).
    value: Callable[[str], object]  # The run's value of a key.
    default: Callable[[str], object]  # A key's value for a run that does not set it.


def digest(values: dict) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:_DIGEST]


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _fit(name: str, values: dict) -> str:
    """`name`, or where it is too long its start and a digest of `values` (a run's own values
    in full, not as shown): the same run gets the same name at every launch, two runs two."""
    if len(name) <= MAX_LENGTH:
        return name
    return f"{name[:MAX_LENGTH - _DIGEST - 1]}-{digest(values)}"


def run_name(overrides: dict, varying: list[str]) -> str:
    """`learning_rate=0.001-seed=1`: the last part of each key whose value differs between
    runs, so names stay short and say what distinguishes the run; a long one (a long string
    value) is cut and ends in a digest of the values, since a file name over the filesystem's
    limit failed mid-sweep."""
    if not varying:
        return "run"
    parts = [f"{key.split('.')[-1]}={format_value(overrides[key])}" for key in varying]
    return _fit(re.sub(r"[^A-Za-z0-9_.=,+-]", "_", "-".join(parts)), {k: overrides[k] for k in varying})


def _json(value):
    return value if value is MISSING else json.loads(json.dumps(value, default=str))  # As sweep.json holds it.


def _same(run: Planned, entry: dict) -> bool:
    old = entry["overrides"]
    return all(_json(run.value(k)) == _json(old[k] if k in old else run.default(k))
               for k in run.swept | set(entry["swept"]))


def assign(planned: list[Planned], existing: Existing | None) -> list[str]:
    """The names of the planned runs: the existing run's where one has the same swept values,
    otherwise the planned name, with a digest of the run's overrides where that is in use."""
    names: list[str | None] = [None] * len(planned)
    entries = list(existing.runs) if existing else []
    for i, run in enumerate(planned):
        if match := next((e for e in entries if _same(run, e)), None):
            names[i] = match["name"]
            entries.remove(match)
    taken = (existing.taken if existing else set()) | {n for n in names if n}
    for i, run in enumerate(planned):
        if names[i] is None:
            name = run.name
            if name in taken:
                name = f"{name[:MAX_LENGTH - _DIGEST - 1]}-{digest(run.overrides)}"
            if name in taken:
                raise SweepError(f"run {run.overrides}: its names {run.name!r} and {name!r} are both in use in this "
                            f"--workdir; launch it into a new --workdir.")
            names[i] = name
            taken.add(name)
    return names
