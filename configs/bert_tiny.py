"""A tiny BERT for tests and smoke runs: the `bert-tiny` shape with the tiny Llama config's data
and schedule (configs/tiny.py), trained by masked language modelling."""

from llmjax.presets import SMOKE_RUN, compose


def get_config():
    return compose("bert-tiny", data="stdlib_json", overrides=SMOKE_RUN)
