"""A tiny T5 for tests and smoke runs: the `t5-tiny` shape with the tiny Llama config's data
and schedule (configs/tiny.py), trained by span corruption."""

from llmjax.presets import SMOKE_RUN, compose


def get_config():
    return compose("t5-tiny", data="stdlib_json", overrides=SMOKE_RUN)
