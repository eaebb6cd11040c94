"""The LSTM baseline on the default corpus: the `lstm-5m` shape (2 layers of 672 cells projected
to 256, tied embeddings; 3.10M non-embedding parameters against the Llama default's 3.15M) with
the default run's data, optimizer and schedule, so its losses compare with configs/default.py's."""

from llmjax.presets import compose


def get_config():
    return compose("lstm-5m")
