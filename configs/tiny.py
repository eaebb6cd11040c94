"""A seconds-long run for smoke tests: the `tiny` model on the stdlib's `json` package."""

from llmjax.presets import compose


def get_config():
    return compose("tiny", data="stdlib_json", overrides={
        "data.seq_len": 64, "train.steps": 20, "train.global_batch_size": 8,
        "train.log_every": 5, "train.eval_every": 10, "train.eval_batches": 2,
        "optimizer.warmup_steps": 5})
