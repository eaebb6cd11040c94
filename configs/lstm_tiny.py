"""configs/tiny.py with the LSTM family: seconds-long runs for smoke tests."""

from llmjax.presets import compose


def get_config():
    return compose("lstm-tiny", data="stdlib_json", overrides={
        "data.seq_len": 64, "train.steps": 20, "train.global_batch_size": 8,
        "train.log_every": 5, "train.eval_every": 10, "train.eval_batches": 2,
        "optimizer.warmup_steps": 5})
