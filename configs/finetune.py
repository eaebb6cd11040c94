"""Fine-tuning the README's default run (`runs/demo`, configs/default.py) on a built-in task
made from the standard library's source:

    llmjax-train --config=configs/finetune.py:package --workdir=runs/package      # classification
    llmjax-train --config=configs/finetune.py:docstring --workdir=runs/docstring  # generation

`package` classifies a function (its docstring removed) into the stdlib package it comes from
(300 steps); `docstring` writes a function's one-line docstring summary from its code (400
steps). Options after the task: `lora` (rank 8 on the attention queries, values and output and
the MLP's down projection, 1.5% of the parameters, everything else frozen; 900 steps), `scratch`
(the same model from random initialisation, the baseline pretraining must beat), or a model
preset for a seconds-long smoke run without init_from (`package,tiny`, `package,bert-tiny`).
"""

from llmjax.presets import finetune


def get_config(arg: str = "package"):
    return finetune(arg)
