"""Named LSTM shapes: a tiny one for tests and one for the default corpus whose non-embedding
parameters (3.10M) match the Llama "5m" default's (3.15M) and GPT-2 "gpt2-5m"'s (3.16M)."""

from __future__ import annotations


def _model(vocab, d_model, layers, hidden, proj, seq):
    return dict(vocab_size=vocab, d_model=d_model, num_layers=layers, hidden_dim=hidden,
                proj_dim=proj, max_seq_len=seq, tie_embeddings=(proj or hidden) == d_model)


PRESETS = {
    "lstm-tiny": _model(512, 64, 2, 64, 0, 64),  # Tests and smoke runs.
    "lstm-5m": _model(8192, 256, 2, 672, 256, 256),  # The default corpus, beside "5m" and "gpt2-5m".
    # bench36m's scale (scripts/benchmark.py): 4 layers of 1536 cells projected to 512, 28M
    # non-embedding parameters against bench36m's 27M.
    "lstm-bench36m": _model(8192, 512, 4, 1536, 512, 512),
}
