"""configs/tiny.py with the GPT-2 family: seconds-long runs for smoke tests."""

from llmjax.presets import SMOKE_RUN, compose


def get_config():
    return compose("gpt2-tiny", data="stdlib_json", overrides=SMOKE_RUN)
