"""An experiment file and its sweep, expanded into named runs and checked before any starts.

An experiment is a Python file with `get_config()` (the base config) and, optionally,
`get_sweep()` returning a dict with any of:
  grid:       {dotted key: [values]}            every combination
  random:     {dotted key: (kind, low, high)}   `num_random` draws, kind "uniform" | "log_uniform"
              or {dotted key: [choices]}         (seeded by `random_seed`)
  runs:       [{dotted key: value, ...}]         explicit runs (e.g. a model-size ladder); the
              key "config" is the argument of the run's `get_config(arg)` (ml_collections'
              `--config=FILE:ARG`), for runs whose base differs beyond overrides, e.g. another
              model family, whose config.model has other fields
  seeds:      [0, 1, ...]                       every run above, once per seed
  scaling:    True                              the report fits loss against compute
  families:   True                              the report compares model families (per family
                                                and size; llmjax/sweep/families.py)
  per_position: True                            ... and plots the loss at each context position
Runs combine as (grid x random draws, or explicit runs) x seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import math
import random
from pathlib import Path

from llmjax.config import ConfigError, apply_overrides, validate
from llmjax.sweep import SweepError, names


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    overrides: dict
    config: object = dataclasses.field(default=None, repr=False, compare=False)  # Built and validated.
    swept: tuple = dataclasses.field(default=(), compare=False)  # The overrides the sweep sets.


CONFIG_ARG = "config"  # The run field that is get_config's argument, not a dotted key.


def load_experiment(path: str):
    """(module, base config, sweep dict or None) of an experiment file."""
    file = Path(path)
    if not file.is_file():
        raise SweepError(f"experiment {path} does not exist; give a Python file with get_config().")
    spec = importlib.util.spec_from_file_location(f"llmjax_experiment_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise SweepError(f"experiment {path} has no get_config().")
    sweep = module.get_sweep() if hasattr(module, "get_sweep") else None
    return module, module.get_config(), sweep


def _draw(spec, rng: random.Random):
    if isinstance(spec, list) and spec:
        return rng.choice(spec)
    if not (isinstance(spec, tuple) and len(spec) == 3):
        raise SweepError(f"random spec {spec!r}: give (kind, low, high), e.g. ('log_uniform', 1e-4, 1e-2), "
                         f"or a list of choices.")
    kind, low, high = spec
    if kind == "uniform":
        return rng.uniform(low, high)
    if kind == "log_uniform":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    raise SweepError(f"random spec {spec!r}: kind must be uniform or log_uniform.")


def _check_list(field: str, values, example) -> None:
    """A sweep's list of values, refused when it is anything else: a string was swept
    character by character, a number raised a TypeError, and `"seeds": 0` was ignored."""
    if not isinstance(values, (list, tuple)):
        raise SweepError(f"sweep {field}: {values!r} is not a list of values; give a list, e.g. {example!r}.")
    if not values:
        raise SweepError(f"sweep {field}: the list is empty; give at least one value, or leave the field out.")


def _checked(sweep: dict) -> None:
    for field in ("grid", "random"):
        if not isinstance(sweep.get(field, {}), dict):
            raise SweepError(f"sweep {field}: {sweep[field]!r} is not a dict; give {{dotted key: values}}.")
    for key, values in sweep.get("grid", {}).items():
        _check_list(f"grid {key!r}", values, [values])
    if "seeds" in sweep:
        n = sweep["seeds"]
        _check_list("seeds", n, list(range(n)) if isinstance(n, int) and n > 0 else [0, 1])
    if "runs" in sweep:
        _check_list("runs", sweep["runs"], [{"model.num_layers": 2}])
        if bad := [run for run in sweep["runs"] if not isinstance(run, dict)]:
            raise SweepError(f"sweep runs: {bad[0]!r} is not a dict; give each run as {{dotted key: value}}.")
    if not (isinstance(n := sweep.get("num_random", 1), int) and n >= 1):
        raise SweepError(f"sweep num_random: {n!r}; give the number of random draws, 1 or more.")


def expand(sweep: dict | None) -> list[dict]:
    """The override dicts of every run, in a stable order."""
    if not sweep:
        return [{}]
    known = {"grid", "random", "num_random", "random_seed", "runs", "seeds", "scaling", "families",
             "per_position"}
    if unknown := set(sweep) - known:
        raise SweepError(f"sweep has unknown fields {sorted(unknown)}; allowed: {sorted(known)}.")
    _checked(sweep)
    grid = sweep.get("grid", {})
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if sweep.get("random"):
        rng = random.Random(sweep.get("random_seed", 0))
        draws = [{k: _draw(v, rng) for k, v in sweep["random"].items()}
                 for _ in range(sweep.get("num_random", 1))]
        combos = [c | d for c in combos for d in draws]
    if explicit := sweep.get("runs", []):
        combos = [c | e for c in combos for e in explicit]
    if seeds := sweep.get("seeds"):
        combos = [c | {"seed": s} for c in combos for s in seeds]
    return combos


def _lookup(config, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _value(config, overrides: dict, key: str):
    """A run's value of `key` (the experiment's get_config argument, or a dotted key of its config)."""
    if key == CONFIG_ARG:
        return overrides.get(CONFIG_ARG)
    try:
        return _lookup(config, key)
    except (KeyError, AttributeError, TypeError):
        return names.MISSING


def plan(path: str, device_count: int, overrides: dict | None = None,
         existing: names.Existing | None = None) -> tuple[object, list[Run], dict]:
    """(base config, runs, sweep) with every run's config built and validated, so a bad key,
    a wrong type or two runs sharing a directory stop the sweep before anything runs.
    `overrides` (from the command line's --config.KEY=VALUE) apply to every run; a key the
    sweep itself varies is refused, since the sweep would silently override it. With
    `existing` (what the sweep directory holds), a run already there keeps its name
    (`names.assign`)."""
    module, base, sweep = load_experiment(path)
    overrides = overrides or {}
    swept = expand(sweep)
    if clash := sorted({k for c in swept for k in c} & set(overrides)):
        raise SweepError(f"--config.{clash[0]} is varied by the sweep in {path}; drop the "
                         f"override or change the sweep.")
    combos = [overrides | c for c in swept]
    keys = list(dict.fromkeys(k for c in combos for k in c))
    resolved, configs, bases = [], [], []
    for overrides in combos:
        dotted = {k: v for k, v in overrides.items() if k != CONFIG_ARG}
        try:
            bases.append(module.get_config(overrides[CONFIG_ARG]) if CONFIG_ARG in overrides else base)
            config = apply_overrides(bases[-1], dotted)
            validate(config, device_count)
        except ConfigError as error:
            raise SweepError(f"run {overrides}: {error}") from None
        configs.append(config)
        resolved.append({k: _value(config, overrides, k) for k in keys})
    varying = [k for k in keys if len({repr(r[k]) for r in resolved}) > 1]
    planned = [names.Planned(names.run_name(values, varying), o, frozenset(c),
                             functools.partial(_value, config, o), functools.partial(_value, b, {}))
               for values, o, c, config, b in zip(resolved, combos, swept, configs, bases)]
    fresh = [p.name for p in planned]
    if duplicates := sorted({n for n in fresh if fresh.count(n) > 1}):
        raise SweepError(f"runs would share the workdirs {duplicates}: two runs have the same "
                         f"overrides; remove the repeated values from the sweep.")
    runs = [Run(name, o, config, tuple(c))
            for name, o, c, config in zip(names.assign(planned, existing), combos, swept, configs)]
    return base, runs, sweep or {}
