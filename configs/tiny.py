"""A seconds-long run for smoke tests: the `tiny` model on the stdlib's `json` package."""

from llmjax.presets import SMOKE_RUN, compose


def get_config():
    return compose("tiny", data="stdlib_json", overrides=SMOKE_RUN)
