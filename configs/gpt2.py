"""GPT-2 on the default corpus: the `gpt2-5m` shape (4 layers, d_model 256, 4 heads, MLP 1024,
learned positions, tied embeddings) with the default run's data, optimizer and schedule, so
its losses compare with configs/default.py's Llama."""

from llmjax.presets import compose


def get_config():
    return compose("gpt2-5m")
