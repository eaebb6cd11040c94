"""A learning-rate scan of the default model, two seeds each: the first sweep to run on a new
setup. 3 x 2 = 6 runs of 150 steps (~3 minutes each on a 2-core CPU)."""

from llmjax.presets import compose


def get_config():
    return compose("5m", overrides={"train.steps": 150, "train.eval_every": 50,
                                    "optimizer.warmup_steps": 15})


def get_sweep():
    return {"grid": {"optimizer.learning_rate": [1e-3, 3e-3, 1e-2]}, "seeds": [0, 1]}
