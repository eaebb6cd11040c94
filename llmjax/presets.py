"""Named model, optimizer and data settings that configs and experiments compose.

Each preset is a partial config (section -> field -> value) applied on top of
`default_config()`; `compose("125m", optimizer="llama", overrides={"train.steps": 100})` builds a
full config without copying one. The Llama shapes follow the published architectures, and their
parameter counts are checked in the tests against the published figures.
"""

from __future__ import annotations

from llmjax.config import ConfigError, apply_overrides, default_config


def _model(vocab, d_model, layers, heads, kv_heads, mlp, seq, tie, theta=10_000.0, eps=1e-5):
    return dict(vocab_size=vocab, d_model=d_model, num_layers=layers, num_heads=heads,
                num_kv_heads=kv_heads, head_dim=d_model // heads, mlp_dim=mlp, max_seq_len=seq,
                tie_embeddings=tie, rope_theta=theta, norm_eps=eps)


MODELS = {
    # For tests and smoke runs: seconds on a CPU.
    "tiny": _model(512, 64, 2, 4, 2, 128, 64, True),
    # The default: ~5M parameters, minutes on a 2-core CPU.
    "5m": _model(8192, 256, 4, 4, 2, 768, 256, True),
    # The benchmark model (scripts/benchmark.py): 36M parameters, 8 heads of 64 without GQA.
    "bench36m": _model(8192, 512, 8, 8, 8, 1536, 512, False),
    # A small GPT-2-scale ladder with Llama blocks (8192-token vocabulary).
    "20m": _model(8192, 384, 8, 6, 2, 1536, 1024, True),
    "125m": _model(32000, 768, 12, 12, 12, 2560, 2048, True),
    "350m": _model(32000, 1024, 24, 16, 16, 2816, 2048, True),
    "1.3b": _model(32000, 2048, 24, 16, 8, 5632, 2048, False),
    # Touvron et al. 2023 (Llama 2): 6,738,415,616 parameters.
    "llama2_7b": _model(32000, 4096, 32, 32, 32, 11008, 4096, False, eps=1e-5),
    # Meta Llama 3 (2024): 8,030,261,248 parameters.
    "llama3_8b": _model(128256, 4096, 32, 32, 8, 14336, 8192, False, theta=500_000.0),
}

OPTIMIZERS = {
    "adamw": {},  # The defaults in llmjax/config.py.
    # Llama 2/3 pretraining: peak 3e-4, 2000 warmup steps, cosine to 10%, clip 1.0, wd 0.1.
    "llama": dict(learning_rate=3e-4, warmup_steps=2000, b2=0.95, weight_decay=0.1,
                  min_lr_ratio=0.1, grad_clip=1.0),
}

DATA = {
    "stdlib": {},  # The whole standard library of this interpreter (the default).
    "stdlib_json": dict(glob="json/*.py", val_percent=20),  # Five files: for tests.
}


def compose(model: str = "5m", optimizer: str = "adamw", data: str = "stdlib",
            overrides: dict | None = None):
    """A full config from presets plus dotted-key `overrides` ({"train.steps": 100})."""
    for kind, name, table in (("model", model, MODELS), ("optimizer", optimizer, OPTIMIZERS),
                              ("data", data, DATA)):
        if name not in table:
            raise ConfigError(f"no {kind} preset {name!r}; choose one of {', '.join(table)}.")
    c = default_config()
    c.model.update(**MODELS[model])
    c.optimizer.update(**OPTIMIZERS[optimizer])
    c.data.update(**DATA[data])
    c.data.seq_len = min(c.data.seq_len, c.model.max_seq_len)  # Small models: shorter windows.
    return apply_overrides(c, overrides or {})
