"""Named BERT shapes: `bert-base` as published (Devlin et al. 2019, 110M with its 30,522-token
vocabulary), a small one for the default corpus beside Llama's "5m", one at the benchmark's
scale, and a tiny one for tests."""

from __future__ import annotations


def _model(vocab, d_model, layers, heads, mlp, seq):
    return dict(vocab_size=vocab, d_model=d_model, num_layers=layers, num_heads=heads,
                head_dim=d_model // heads, mlp_dim=mlp, max_seq_len=seq)


PRESETS = {
    "bert-base": _model(30522, 768, 12, 12, 3072, 512),
    "bert-5m": _model(8192, 256, 4, 4, 1024, 256),
    # bench36m's shape (scripts/benchmark.py): 8 layers of width 512, 8 heads of 64, MLP 2048.
    "bert-bench36m": _model(8192, 512, 8, 8, 2048, 512),  # The default corpus, beside "5m" and "gpt2-5m".
    "bert-tiny": _model(512, 64, 2, 2, 128, 64),  # Tests and smoke runs.
}
