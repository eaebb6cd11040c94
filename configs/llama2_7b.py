"""The `llama2_7b` model preset (llmjax/presets.py) with the default optimizer and data."""

from llmjax.presets import compose


def get_config():
    return compose("llama2_7b")
