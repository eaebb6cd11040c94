"""The `mixtral_8x7b` model preset (llmjax/presets.py: 46.7B parameters, 12.9B active per token)
with the default optimizer and data; for `llmjax-plan` of expert-parallel layouts."""

from llmjax.presets import compose


def get_config():
    return compose("mixtral_8x7b")
