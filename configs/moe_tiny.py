"""A seconds-long mixture-of-experts run for smoke tests: the `tiny_moe` model (the tiny Llama
with top-2 of 4 experts in every layer, Mixtral's layout) on the stdlib's `json` package."""

from llmjax.presets import SMOKE_RUN, compose


def get_config():
    return compose("tiny_moe", data="stdlib_json", overrides=SMOKE_RUN)
