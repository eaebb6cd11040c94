"""Dense against mixture-of-experts at the same active parameters: the default run's Llama
(configs/default.py, 5.2M parameters) and its MoE variant `5m_moe` (every MLP 8 experts of half
the width, top-2: 12.3M parameters, 5.3M active per token), on the default corpus with the
same tokens, optimizer and schedule; the MoE once dropless (grouped matmuls, the default) and
once with a capacity of 1.25 (tokens over it dropped). `llmjax-report` plots training and
validation loss against training compute (active-parameter FLOPs) for every run, and each MoE
run's routing per layer: load imbalance and dropped tokens over training (both drawn for any
sweep with an MoE run, llmjax/sweep/routing.py).

    llmjax-sweep experiments/moe.py --workdir runs/moe && llmjax-report runs/moe
"""

from llmjax.presets import compose

RUNS = {"dense": ("5m", {}), "moe": ("5m_moe", {}), "moe-capacity": ("5m_moe", {"model.capacity_factor": 1.25})}


def get_config(arg: str = "moe"):
    if arg not in RUNS:
        raise ValueError(f"experiments/moe.py:{arg}: expected one of {', '.join(RUNS)}.")
    preset, overrides = RUNS[arg]
    return compose(preset, overrides=overrides)


def get_sweep():
    return {"runs": [{"config": name} for name in RUNS]}
