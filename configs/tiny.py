"""A seconds-long model for smoke tests: two layers, 64 wide, a 512-token vocabulary, trained on
the stdlib's `json` package only."""

from llmjax.config import default_config


def get_config():
    c = default_config()
    c.model.update(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=16, mlp_dim=128, max_seq_len=64)
    c.data.update(glob="json/*.py", seq_len=64, val_percent=20)
    c.train.update(steps=20, global_batch_size=8, log_every=5, eval_every=10, eval_batches=2)
    c.optimizer.update(warmup_steps=5)
    return c
