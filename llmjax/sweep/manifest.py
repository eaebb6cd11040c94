"""`sweep.json`, a sweep directory's record of its runs: each run's name (its directory under
runs/), its overrides (which the report shows and plots against) and the keys of those that
its sweep set (to recognise it when a relaunch grows the sweep, `names.assign`).

It is written whole (never half a file), only after every check of a launch has passed, and
keeps the runs of earlier launches that the experiment no longer plans: their directories and
results stay, and so does their place in the report.
"""

from __future__ import annotations

from pathlib import Path

from llmjax.data.jsonfile import read_json_object
from llmjax.rundir import write_json
from llmjax.sweep import SweepError
from llmjax.sweep.names import Existing

FILE = "sweep.json"


def _fix(path: Path) -> str:
    return (f"it was damaged or edited: restore it, or delete it and launch the sweep again into "
            f"{path.parent} with the experiment and overrides it ran with, which writes it anew.")


def _valid_entry(entry) -> bool:
    name = entry.get("name") if isinstance(entry, dict) else None
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and isinstance(entry.get("overrides"), dict) and isinstance(entry.get("swept", []), list))


def read(sweep_dir: Path) -> dict | None:
    """The sweep directory's manifest, None where there is none; a damaged one is refused with
    one line naming the file and the fix."""
    path = Path(sweep_dir) / FILE
    if not path.exists():
        return None
    manifest = read_json_object(path, SweepError, _fix(path), keys=("runs",))
    runs = manifest["runs"]
    if not isinstance(runs, list) or not all(_valid_entry(e) for e in runs):
        raise SweepError(f"{path}: its runs are not a list of {{name, overrides}}; {_fix(path)}")
    if not isinstance(manifest.get("sweep", {}), dict):
        raise SweepError(f"{path}: its sweep is not a dict; {_fix(path)}")
    return manifest


def _swept(runs: list[dict]) -> list[dict]:
    """Each run with the keys its sweep set. A manifest written before they were recorded has
    them guessed: the keys not set alike in every run (those alike came from the command line,
    or could as well have)."""
    first = runs[0]["overrides"] if runs else {}
    common = {k for k, v in first.items() if all(k in r["overrides"] and r["overrides"][k] == v for r in runs)}
    return [r if "swept" in r else r | {"swept": sorted(set(r["overrides"]) - common)} for r in runs]


def existing(sweep_dir: Path) -> Existing | None:
    """The runs `sweep_dir`'s manifest records, for `expand.plan`; None without one. A run
    directory the manifest does not record (a --run_index launch writes none; a manifest deleted
    to be written anew) is the run its name says: a planned run of that name resumes it."""
    manifest = read(sweep_dir)
    if manifest is None:
        return None
    runs = _swept(manifest["runs"])
    return Existing(runs, {r["name"] for r in runs})


def write(sweep_dir: Path, experiment: str, runs: list, sweep: dict) -> None:
    """sweep.json with the planned `runs` (`expand.Run`s), then the earlier runs not among them."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    planned = [{"name": r.name, "overrides": r.overrides, "swept": list(r.swept)} for r in runs]
    earlier = [r for r in (read(sweep_dir) or {"runs": []})["runs"] if r["name"] not in {p["name"] for p in planned}]
    manifest = {"experiment": str(Path(experiment).resolve()), "sweep": sweep, "runs": planned + earlier}
    write_json(sweep_dir / FILE, manifest, indent=1, default=str)  # Whole, even if killed.
