"""Named model, optimizer and data settings that configs and experiments compose.

Model presets belong to their family (`llmjax/model/<family>/presets.py`); a preset name is
unique across families and selects the family too. Each preset is a partial config applied on
top of `default_config(family)`; `compose("125m", optimizer="llama", overrides={"train.steps":
100})` builds a full config without copying one.
"""

from __future__ import annotations

from llmjax.config import ConfigError, apply_overrides, default_config
from llmjax.model import registry


OPTIMIZERS = {
    "adamw": {},  # The defaults in llmjax/config.py.
    # Llama 2/3 pretraining: peak 3e-4, 2000 warmup steps, cosine to 10%, clip 1.0, wd 0.1.
    "llama": dict(learning_rate=3e-4, warmup_steps=2000, b2=0.95, weight_decay=0.1,
                  min_lr_ratio=0.1, grad_clip=1.0),
    "muon": dict(name="muon"),  # The defaults' schedule and rates, Muon for the hidden matrices.
}

# A seconds-long run on DATA["stdlib_json"]: what the tiny configs (configs/*tiny.py) train.
SMOKE_RUN = {"data.seq_len": 64, "train.steps": 20, "train.global_batch_size": 8, "train.log_every": 5,
             "train.eval_every": 10, "train.eval_batches": 2, "optimizer.warmup_steps": 5}

DATA = {
    "stdlib": {},  # The whole standard library of this interpreter (the default).
    "stdlib_json": dict(glob="json/*.py", val_percent=20),  # Five files: for tests.
}


def compose(model: str = "5m", optimizer: str = "adamw", data: str = "stdlib",
            overrides: dict | None = None, objective: str | None = None):
    """A full config from presets plus dotted-key `overrides` ({"train.steps": 100}); the
    objective is the family's first unless named."""
    found = registry.find_preset(model)
    if found is None:
        raise ConfigError(f"no model preset {model!r}; choose one of {', '.join(model_presets())}.")
    for kind, name, table in (("optimizer", optimizer, OPTIMIZERS), ("data", data, DATA)):
        if name not in table:
            raise ConfigError(f"no {kind} preset {name!r}; choose one of {', '.join(table)}.")
    family, shape = found
    c = default_config(family.name, objective)
    c.model.update(**shape)
    c.optimizer.update(**OPTIMIZERS[optimizer])
    c.data.update(**DATA[data])
    c.data.seq_len = min(c.data.seq_len, c.model.max_seq_len)  # Small models: shorter windows.
    return apply_overrides(c, overrides or {})


def model_presets() -> list[str]:
    return [name for family in map(registry.get, registry.names()) for name in family.presets]


# Fine-tuning the README's default run on a built-in task (configs/finetune.py, experiments/finetune.py).
FINETUNE_TASKS = {"package": ("classify", "stdlib_package"), "docstring": ("sft", "stdlib_docstring")}


def finetune(arg: str = "package"):
    """A fine-tuning config of configs/finetune.py (which documents `arg`)."""
    task, *options = arg.split(",")
    if task not in FINETUNE_TASKS:
        raise ConfigError(f"configs/finetune.py:{arg}: choose a task of {', '.join(FINETUNE_TASKS)}.")
    objective, builtin = FINETUNE_TASKS[task]
    if unknown := [option for option in options if option not in ("lora", "scratch", *model_presets())]:
        raise ConfigError(f"configs/finetune.py:{arg}: no option {unknown[0]!r}; options are lora, scratch "
                          f"or a model preset for a smoke run (configs/finetune.py).")
    smoke = next((option for option in options if option in model_presets()), None)
    if objective == "sft" and smoke and smoke.startswith("t5"):
        objective = "seq2seq"  # An encoder-decoder writes the response from its encoder's reading.
    # Evaluation covers every held-out example (312 to classify in 20 batches of 16, 254 to summarise).
    overrides = {"objective.task": builtin, "train.steps": 300, "train.eval_every": 100, "train.log_every": 20,
                 "train.eval_batches": 20, "optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 30,
                 "checkpoint.init_from": "" if smoke or "scratch" in options else "runs/demo"}
    if objective == "sft":
        overrides |= {"objective.template": "{prompt}\n# Summary: "}
        if not smoke:  # 400 steps: 300 leave chrF below the copy baseline's (README, "Fine-tuning").
            overrides |= {"objective.eval_examples": 256, "train.steps": 400, "optimizer.warmup_steps": 40}
    if objective == "seq2seq":
        overrides |= {"objective.template": "summarize: {prompt}", "objective.targets_length": 32}
    if smoke:
        overrides |= SMOKE_RUN | {"train.eval_batches": 2}
    if "lora" in options:
        overrides |= {"finetune.lora_rank": 8, "optimizer.learning_rate": 3e-3}
        if not smoke:  # 1.5% of the default model's parameters; adapters need more steps (README).
            overrides |= {"finetune.lora_targets": "query,value,out,down", "train.steps": 900,
                          "optimizer.warmup_steps": 90, "train.eval_every": 300}
    return compose(smoke or "5m", data="stdlib_json" if smoke else "stdlib", objective=objective, overrides=overrides)


def from_run(arg: str):
    """A saved run's config (configs/imported.py): `RUN`, or `RUN,OBJECTIVE` with that
    objective's defaults in place of the run's own (an imported BERT fine-tuned to classify)."""
    from llmjax.rundir import RunDir  # noqa: PLC0415 - the run layer imports the presets' peers.
    from llmjax.train import objectives  # noqa: PLC0415

    workdir, _, objective = arg.rpartition(",") if "," in arg else (arg, "", "")
    config = RunDir(workdir).config
    if not objective:
        return config
    family = registry.get(config.model.family)
    if objective not in family.objectives:
        raise ConfigError(f"configs/imported.py:{arg}: the {family.name} family trains on "
                          f"{', '.join(family.objectives)}, not {objective!r}"
                          + ("" if objective in objectives.names() else f" (objectives: {', '.join(objectives.names())})")
                          + ".")
    fresh = default_config(family.name, objective)
    for section in config:
        if section != "objective":
            fresh[section] = config[section]
    return fresh
