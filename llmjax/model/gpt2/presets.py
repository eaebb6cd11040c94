"""Named GPT-2 shapes: the published ones (checked in the tests against transformers'
parameter counts) and a small one for the default corpus."""

from __future__ import annotations


def _model(vocab, d_model, layers, heads, seq):
    return dict(vocab_size=vocab, d_model=d_model, num_layers=layers, num_heads=heads,
                head_dim=d_model // heads, mlp_dim=4 * d_model, max_seq_len=seq, tie_embeddings=True)


PRESETS = {
    "gpt2-tiny": _model(512, 64, 2, 4, 64),  # Tests and smoke runs.
    "gpt2-5m": _model(8192, 256, 4, 4, 256),  # The default corpus, beside Llama's "5m".
    # bench36m's shape (scripts/benchmark.py): 8 layers of width 512, 8 heads of 64, MLP 2048.
    "gpt2-bench36m": _model(8192, 512, 8, 8, 512),
    "gpt2": _model(50257, 768, 12, 12, 1024),  # 124M: 124,439,808 parameters.
    "gpt2-medium": _model(50257, 1024, 24, 16, 1024),  # 355M: 354,823,168 parameters.
}
