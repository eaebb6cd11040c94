"""Fine-tuning the README's default run (`runs/demo`, configs/default.py) on a built-in task
made from the standard library's source:

    llmjax-train --config=configs/finetune.py:package --workdir=runs/package      # classification
    llmjax-train --config=configs/finetune.py:docstring --workdir=runs/docstring  # generation

`package` classifies a function (its docstring removed) into the stdlib package it comes from;
`docstring` writes a function's one-line docstring summary from its code. Options after the
task: `lora` (rank 8 on the attention queries and values, everything else frozen), `scratch`
(the same model from random initialisation, the baseline pretraining must beat), or a model
preset for a seconds-long smoke run without init_from (`package,tiny`, `package,bert-tiny`).
"""

from llmjax.presets import SMOKE_RUN, compose, model_presets

TASKS = {"package": ("classify", "stdlib_package"), "docstring": ("sft", "stdlib_docstring")}


def get_config(arg: str = "package"):
    task, *options = arg.split(",")
    if task not in TASKS:
        raise ValueError(f"configs/finetune.py:{arg}: choose a task of {', '.join(TASKS)}.")
    objective, builtin = TASKS[task]
    smoke = next((option for option in options if option in model_presets()), None)
    if objective == "sft" and smoke and smoke.startswith("t5"):
        objective = "seq2seq"  # An encoder-decoder writes the response from its encoder's reading.
    overrides = {"objective.task": builtin, "train.steps": 300, "train.eval_every": 100, "train.log_every": 20,
                 "train.eval_batches": 16, "optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 30,
                 "checkpoint.init_from": "" if smoke or "scratch" in options else "runs/demo"}
    if objective == "sft":
        overrides |= {"objective.template": "{prompt}\n# Summary: "}
    if objective == "seq2seq":
        overrides |= {"objective.template": "summarize: {prompt}", "objective.targets_length": 32}
    if smoke:
        overrides |= SMOKE_RUN | {"train.eval_batches": 2}
    if "lora" in options:
        overrides |= {"finetune.lora_rank": 8, "optimizer.learning_rate": 3e-3}
    return compose(smoke or "5m", data="stdlib_json" if smoke else "stdlib", objective=objective, overrides=overrides)
