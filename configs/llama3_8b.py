"""The `llama3_8b` model preset (llmjax/presets.py) with the default optimizer and data."""

from llmjax.presets import compose


def get_config():
    return compose("llama3_8b")
