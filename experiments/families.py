"""What the Transformer bought: Llama, GPT-2 and the LSTM at two matched sizes on the default
corpus, with the same tokenizer, tokens, optimizer and schedule as configs/default.py (whose
Llama run is the "llama-5m" run here). Sizes are matched in non-embedding parameters, as
Kaplan et al. 2020 compare them: ~0.78M (d_model 128) and ~3.1M (d_model 256), embeddings
equal within a size. `llmjax-report` tabulates final validation loss and bits per byte per
family and size, plots loss against training compute, and the validation loss at each position
in the context (Kaplan et al.'s figure 7), where the LSTM's stops falling and the Transformers'
does not. BERT, trained by masked language modelling on the same tokens (with a mask token in
its tokenizer), joins in a table of its own: its loss is over the masked tokens, not the next
ones. About an hour on a 2-core CPU.

    llmjax-sweep experiments/families.py --workdir runs/families && llmjax-report runs/families
"""

from llmjax.presets import compose

# The d_model 256 size: 3.1M non-embedding parameters (BERT's 3.2M count its MLM head's transform).
BASE = {"llama": "5m", "gpt2": "gpt2-5m", "lstm": "lstm-5m", "bert": "bert-5m"}
SMALL = {  # d_model 128: 0.78M non-embedding parameters in each family.
    "llama": {"model.d_model": 128, "model.num_heads": 2, "model.num_kv_heads": 1, "model.head_dim": 64,
              "model.mlp_dim": 384},
    "gpt2": {"model.d_model": 128, "model.num_heads": 2, "model.head_dim": 64, "model.mlp_dim": 512},
    "lstm": {"model.d_model": 128, "model.hidden_dim": 336, "model.proj_dim": 128},
    "bert": {"model.d_model": 128, "model.num_heads": 2, "model.head_dim": 64, "model.mlp_dim": 512},
}
SIZES = {"small": SMALL, "base": {family: {} for family in BASE}}


def get_config(arg: str = "llama-base"):
    """The run `FAMILY-SIZE` (e.g. `lstm-small`); the default is configs/default.py's run."""
    family, _, size = arg.partition("-")
    if family not in BASE or size not in SIZES:
        raise ValueError(f"experiments/families.py:{arg}: expected FAMILY-SIZE with FAMILY in "
                         f"{', '.join(BASE)} and SIZE in {', '.join(SIZES)}.")
    return compose(BASE[family], overrides=SIZES[size][family])


def get_sweep():
    return {"runs": [{"config": f"{family}-{size}"} for size in SIZES for family in BASE],
            "families": True, "per_position": True}
