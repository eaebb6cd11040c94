"""configs/tiny.py with the LSTM family: seconds-long runs for smoke tests."""

from llmjax.presets import SMOKE_RUN, compose


def get_config():
    return compose("lstm-tiny", data="stdlib_json", overrides=SMOKE_RUN)
