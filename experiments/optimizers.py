"""AdamW against Muon on the default model and corpus: a learning-rate scan of each, same
steps and tokens, so that each is compared at its own best rate. Muon updates the hidden
matrices at AdamW's RMS (optimizer.muon_rms), so the two share a scale of learning rates.
2 x 5 = 10 runs of 150 steps (about 2 minutes each on a 2-core CPU).

    llmjax-sweep experiments/optimizers.py --workdir runs/optimizers && llmjax-report runs/optimizers
"""

from llmjax.presets import compose


def get_config():
    return compose("5m", overrides={"train.steps": 150, "train.eval_every": 50, "optimizer.warmup_steps": 15})


def get_sweep():
    return {"grid": {"optimizer.name": ["adamw", "muon"], "optimizer.learning_rate": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]}}
