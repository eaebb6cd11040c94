"""BERT on the default corpus: the `bert-5m` shape (4 post-LayerNorm layers of width 256, tied
MLM head) trained by masked language modelling with the default run's data, optimizer and
schedule; its tokenizer is the default one plus a mask token."""

from llmjax.presets import compose


def get_config():
    return compose("bert-5m")
