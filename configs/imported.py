"""The config a run directory was saved with, e.g. one made by llmjax-import, as a starting
point: `llmjax-train --config=configs/imported.py:RUN --workdir NEW
--config.checkpoint.init_from=RUN [--config.a.b=v ...]`. `RUN,OBJECTIVE` puts that objective's
defaults in place of the run's own, to fine-tune an imported model on a task:
`configs/imported.py:runs/bert,classify --config.objective.task_files=train.jsonl ...`."""

from llmjax.presets import from_run


def get_config(arg):
    return from_run(arg)
