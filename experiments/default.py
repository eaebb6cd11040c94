"""The default experiment: the default config on the built-in stdlib corpus, no sweep.

An experiment file is a config file like those under `configs/` (it defines `get_config()`),
so `llmjax-train --config experiments/default.py --workdir runs/x` runs it.
"""

from llmjax.config import default_config


def get_config():
    return default_config()
