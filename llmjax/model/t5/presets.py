"""Named T5 shapes: `t5-small` and `t5-base` as T5 v1.1 published them (gated GELU, 32,128-token
vocabulary, 8 and 12 layers a side), the original T5's small (`t5-small-v1.0`: ReLU MLP, 6 layers
a side), a small one for the default corpus beside Llama's "5m",
one at the benchmark's scale, and a tiny one for tests."""

from __future__ import annotations


def _model(vocab, d_model, layers, heads, head_dim, mlp, seq):
    return dict(vocab_size=vocab, d_model=d_model, num_layers=layers, num_heads=heads, head_dim=head_dim,
                mlp_dim=mlp, max_seq_len=seq)


PRESETS = {
    "t5-small": _model(32128, 512, 8, 6, 64, 1024, 512),  # google/t5-v1_1-small's shape.
    "t5-base": _model(32128, 768, 12, 12, 64, 2048, 512),  # google/t5-v1_1-base's shape.
    "t5-small-v1.0": _model(32128, 512, 6, 8, 64, 2048, 512) | {"feed_forward": "relu"},  # google-t5/t5-small's.
    "t5-5m": _model(8192, 256, 2, 4, 64, 768, 256),  # The default corpus, beside "5m".
    # bench36m's width (scripts/benchmark.py): 4 + 4 layers of width 512, 8 heads of 64, MLP 1536.
    "t5-bench36m": _model(8192, 512, 4, 8, 64, 1536, 512),
    "t5-tiny": _model(512, 64, 2, 2, 32, 128, 64),  # Tests and smoke runs.
}
