"""T5 on the default corpus: the `t5-5m` shape (2 + 2 gated-GELU layers of width 256, relative
position buckets) trained by span corruption with the default run's data, optimizer and
schedule; encoder windows of 256 tokens, a decoder of 58 targets; its tokenizer is the default
one plus T5's 100 sentinel tokens."""

from llmjax.presets import compose


def get_config():
    return compose("t5-5m")
