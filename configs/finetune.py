"""Fine-tuning the README's default run (`runs/demo`, configs/default.py) on a built-in task
made from the standard library's source:

    llmjax-train --config=configs/finetune.py:package --workdir=runs/package      # classification
    llmjax-train --config=configs/finetune.py:docstring --workdir=runs/docstring  # generation

`package` classifies a function (its docstring removed) into the stdlib package it comes from;
`docstring` writes a function's one-line docstring summary from its code. The argument may add
a model preset for a quick run (`package,tiny`: the tiny model on the json package's tokenizer
data, no init_from), and `,lora` for LoRA (rank 8 on the attention queries and values).
"""

from llmjax.presets import SMOKE_RUN, compose

TASKS = {"package": ("classify", "stdlib_package"), "docstring": ("sft", "stdlib_docstring")}


def get_config(arg: str = "package"):
    task, *options = arg.split(",")
    if task not in TASKS:
        raise ValueError(f"configs/finetune.py:{arg}: choose a task of {', '.join(TASKS)}.")
    objective, builtin = TASKS[task]
    tiny = "tiny" in options
    overrides = {"objective.task": builtin, "train.steps": 300, "train.eval_every": 100, "train.log_every": 20,
                 "train.eval_batches": 16, "optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 30,
                 "checkpoint.init_from": "" if tiny else "runs/demo"}
    if objective == "sft":
        overrides |= {"objective.template": "{prompt}\n# Summary: "}
    if tiny:
        overrides |= SMOKE_RUN | {"train.eval_batches": 2}
    if "lora" in options:
        overrides |= {"finetune.lora_rank": 8, "optimizer.learning_rate": 3e-3}
    return compose("tiny" if tiny else "5m", data="stdlib_json" if tiny else "stdlib",
                   objective=objective, overrides=overrides)
