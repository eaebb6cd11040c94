"""A model-size ladder at compute-optimal token budgets (Hoffmann et al. 2022: ~20 tokens per
parameter), small enough for a CPU: four widths/depths on the stdlib corpus with a 2048-token
vocabulary shared by all rungs. `llmjax-report` fits final loss against training compute.
About 15 minutes in all on a 2-core CPU."""

import math

from llmjax.flops import param_count
from llmjax.presets import compose

TOKENS_PER_PARAM = 20
BATCH, SEQ = 16, 128
RUNGS = [  # (d_model, layers, heads, mlp_dim)
    (32, 2, 2, 96),
    (48, 2, 3, 128),
    (64, 3, 4, 192),
    (96, 4, 6, 256),
]


def get_config():
    return compose("tiny", overrides={
        "model.vocab_size": 2048, "model.max_seq_len": SEQ, "model.num_kv_heads": 1,
        "data.seq_len": SEQ, "train.global_batch_size": BATCH, "train.log_every": 50,
        "train.eval_every": 0, "train.eval_batches": 8, "optimizer.learning_rate": 3e-3,
        "optimizer.warmup_steps": 20, "checkpoint.every_steps": 500})


def _rung(d_model, layers, heads, mlp_dim):
    shape = {"model.d_model": d_model, "model.num_layers": layers, "model.num_heads": heads,
             "model.head_dim": d_model // heads, "model.mlp_dim": mlp_dim}
    config = compose("tiny", overrides={**shape, "model.vocab_size": 2048})
    steps = math.ceil(TOKENS_PER_PARAM * param_count(config.model) / (BATCH * SEQ))
    return shape | {"train.steps": steps}


def get_sweep():
    return {"runs": [_rung(*rung) for rung in RUNGS], "scaling": True}
