"""The default experiment: the default config (configs/default.py) on the built-in stdlib
corpus, no sweep. `llmjax-train --config experiments/default.py --workdir runs/x` runs it;
so does `llmjax-sweep experiments/default.py --workdir runs/x`."""

from llmjax.presets import compose


def get_config():
    return compose("5m")
