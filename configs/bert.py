"""BERT on the default corpus: the `bert-5m` shape (4 post-LayerNorm layers of width 256, tied
MLM head) trained by masked language modelling with the default run's data and schedule; its
tokenizer is the default one plus a mask token. Peak learning rate 1e-3, not the decoders'
3e-3: at 3e-3 this post-LN BERT stays at the unigram loss of the masked tokens for all 400 steps
(val accuracy 0.028, the most frequent token), at 1e-3 it leaves it by step 100."""

from llmjax.presets import compose


def get_config():
    return compose("bert-5m", overrides={"optimizer.learning_rate": 1e-3})
