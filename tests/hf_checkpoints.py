"""Hand-written Hugging Face Llama checkpoints (safetensors from numpy, no torch) for tests."""

import json

import numpy as np
from safetensors.numpy import save_file

from llmjax.data.tokenizer import train_tokenizer

HF_CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=300,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=64, max_position_embeddings=64, rms_norm_eps=1e-6,
                 rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                 torch_dtype="float32")
LAYER_TENSORS = {"self_attn.q_proj.weight": ("q", "d"), "self_attn.k_proj.weight": ("kv", "d"),
                 "self_attn.v_proj.weight": ("kv", "d"), "self_attn.o_proj.weight": ("d", "q"),
                 "mlp.gate_proj.weight": ("f", "d"), "mlp.up_proj.weight": ("f", "d"),
                 "mlp.down_proj.weight": ("d", "f"), "input_layernorm.weight": ("d",),
                 "post_attention_layernorm.weight": ("d",)}


def hf_shapes(config):
    dims = {"d": config["hidden_size"], "f": config["intermediate_size"], "v": config["vocab_size"],
            "q": config["hidden_size"],
            "kv": config["hidden_size"] // config["num_attention_heads"] * config["num_key_value_heads"]}
    shapes = {"model.embed_tokens.weight": (dims["v"], dims["d"]), "model.norm.weight": (dims["d"],)}
    for i in range(config["num_hidden_layers"]):
        for name, axes in LAYER_TENSORS.items():
            shapes[f"model.layers.{i}.{name}"] = tuple(dims[a] for a in axes)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (dims["v"], dims["d"])
    return shapes


def make_hf_dir(directory, config=None, dtype=np.float32, drop=(), reshape=None, seed=0):
    """A safetensors Llama checkpoint written from numpy, with a small BPE tokenizer."""
    config = dict(HF_CONFIG, **(config or {}))
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    tensors = {name: rng.standard_normal((reshape or {}).get(name, shape)).astype(dtype)
               for name, shape in hf_shapes(config).items() if name not in drop}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    train_tokenizer(["def f(x):\n    return x + 1\n"] * 20, config["vocab_size"], directory / "tokenizer.json")
    return tensors
