"""The `1.3b` model preset (llmjax/presets.py) with the default optimizer and data."""

from llmjax.presets import compose


def get_config():
    return compose("1.3b")
