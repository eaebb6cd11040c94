"""The config a run directory was saved with, e.g. one made by llmjax-import, as a starting
point: `llmjax-train --config=configs/imported.py:RUN --workdir NEW
--config.checkpoint.init_from=RUN [--config.a.b=v ...]`."""

from llmjax.rundir import RunDir


def get_config(workdir):
    return RunDir(workdir).config
