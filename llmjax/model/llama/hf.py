"""How an llmjax model corresponds to a Hugging Face `LlamaForCausalLM` (dense) or
`MixtralForCausalLM` (every layer a mixture of experts): the config fields and, for every
tensor, its HF name, its llmjax parameter path and the reshape between the two.

Mixtral's tensors are written as the Hub's checkpoints name them
(`block_sparse_moe.experts.{j}.w1/w2/w3`, which transformers 5 loads into its fused experts
and earlier versions load as they are). An exported MoE model is dropless, as Mixtral runs.

Both sides use the rotate-half RoPE layout (see `llmjax/model/layers/rope.py`), so query and key
weights need no permutation: only the transposes and reshapes between torch's
[out_features, in_features] `nn.Linear` weights and llmjax's multi-axis kernels.
"""

from __future__ import annotations

from llmjax.interop.tensor_map import InteropError, TensorMap, refuse_unsupported

MODEL_TYPE = "llama"
MODEL_TYPES = ("llama", "mixtral")
# Buffers older transformers saved (recomputed here), and the output matrix that some tied
# checkpoints still store (identical to the embedding).
OPTIONAL_TENSORS = ("rotary_emb.inv_freq", "lm_head.weight")


_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "max_position_embeddings", "rms_norm_eps")
# HF config fields that select behaviour llmjax does not implement, with the value llmjax has.
_UNSUPPORTED_IF_SET = {
    "attention_bias": False, "mlp_bias": False, "hidden_act": "silu", "pretraining_tp": 1,
    "sliding_window": None, "router_jitter_noise": 0.0,
}


def _rope(hf: dict) -> float:
    """rope_theta from either transformers layout (`rope_parameters` since v5, top-level
    `rope_theta` / `rope_scaling` before); any scaled RoPE is refused."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise InteropError(f"config.json: rope type {kind!r} (rope scaling) is not supported by "
                           f"llmjax, which implements plain RoPE only.")
    return float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def model_overrides(hf: dict) -> dict:
    """`config.model` fields of an HF Llama config.json; refuses anything llmjax would not
    reproduce exactly, before a tensor is read."""
    refuse_unsupported(hf, _UNSUPPORTED_IF_SET)
    missing = [key for key in _REQUIRED if key not in hf]
    if missing:
        raise InteropError(f"config.json: lacks {', '.join(missing)}; is it a complete Llama config?")
    heads, d_model = hf["num_attention_heads"], hf["hidden_size"]
    head_dim = hf.get("head_dim") or d_model // heads  # Set apart from hidden_size by e.g. Mistral-Nemo.
    model = dict(family="llama", vocab_size=hf["vocab_size"], d_model=d_model, num_layers=hf["num_hidden_layers"],
                 num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
                 head_dim=head_dim, mlp_dim=hf["intermediate_size"],
                 max_seq_len=hf["max_position_embeddings"], rope_theta=_rope(hf),
                 norm_eps=float(hf["rms_norm_eps"]),
                 tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    if hf.get("model_type") == "mixtral":
        missing = [key for key in ("num_local_experts", "num_experts_per_tok") if key not in hf]
        if missing:
            raise InteropError(f"config.json: lacks {', '.join(missing)}; is it a complete Mixtral config?")
        model |= dict(num_experts=hf["num_local_experts"], experts_per_token=hf["num_experts_per_tok"],
                      expert_mlp_dim=hf["intermediate_size"], moe_every=1, shared_experts=0,
                      router="topk_softmax", capacity_factor=0.0,
                      load_balancing_weight=float(hf.get("router_aux_loss_coef", 0.001)), router_z_weight=0.0)
    return model


def _mixtral_or_refuse(model) -> None:
    """An MoE model exports as Mixtral, which has exactly one kind of MoE layer."""
    wants = {"moe_every": 1, "shared_experts": 0, "router": "topk_softmax"}
    for key, value in wants.items():
        if model[key] != value:
            raise InteropError(f"model.{key}={model[key]!r}: a Mixtral checkpoint has {key}={value!r}; "
                               f"this MoE model has no Hugging Face equivalent llmjax writes.")


def hf_config(model, dtype: str, special_ids: dict) -> dict:
    """config.json of a `LlamaForCausalLM` (or `MixtralForCausalLM`) equal to the llmjax
    model `model` (config.model)."""
    if model.num_experts:
        _mixtral_or_refuse(model)
        return _dense_config(model, dtype, special_ids) | {
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
            "intermediate_size": model.expert_mlp_dim or model.mlp_dim,
            "num_local_experts": model.num_experts, "num_experts_per_tok": model.experts_per_token,
            "router_aux_loss_coef": model.load_balancing_weight, "router_jitter_noise": 0.0,
            "output_router_logits": False, "sliding_window": None}
    return _dense_config(model, dtype, special_ids)


def _dense_config(model, dtype: str, special_ids: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": model.vocab_size, "hidden_size": model.d_model,
        "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.num_kv_heads, "head_dim": model.head_dim,
        "intermediate_size": model.mlp_dim, "max_position_embeddings": model.max_seq_len,
        "rope_theta": model.rope_theta, "rope_scaling": None, "rms_norm_eps": model.norm_eps,
        "tie_word_embeddings": model.tie_embeddings, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "initializer_range": model.init_scale, "use_cache": True, "torch_dtype": dtype,
        **special_ids,
    }


def tensor_maps(model) -> list[TensorMap]:
    """Every tensor of the HF checkpoint of `model` (config.model), in HF's order."""
    d, n, k, h, f, v = (model.d_model, model.num_heads, model.num_kv_heads, model.head_dim,
                        model.mlp_dim, model.vocab_size)
    maps = [TensorMap("model.embed_tokens.weight", ("embed", "embedding"), None, (v, d), (v, d), False)]
    per_layer = [
        ("self_attn.q_proj.weight", ("attention", "query", "kernel"), (n * h, d), (d, n, h), True),
        ("self_attn.k_proj.weight", ("attention", "key", "kernel"), (k * h, d), (d, k, h), True),
        ("self_attn.v_proj.weight", ("attention", "value", "kernel"), (k * h, d), (d, k, h), True),
        ("self_attn.o_proj.weight", ("attention", "out", "kernel"), (d, n * h), (n, h, d), True),
        ("mlp.gate_proj.weight", ("mlp", "gate", "kernel"), (f, d), (d, f), True),
        ("mlp.up_proj.weight", ("mlp", "up", "kernel"), (f, d), (d, f), True),
        ("mlp.down_proj.weight", ("mlp", "down", "kernel"), (d, f), (f, d), True),
        ("input_layernorm.weight", ("attention_norm", "scale"), (d,), (d,), False),
        ("post_attention_layernorm.weight", ("mlp_norm", "scale"), (d,), (d,), False),
    ]
    if model.num_experts:
        _mixtral_or_refuse(model)
        per_layer = [m for m in per_layer if not m[0].startswith("mlp.")]
        e, f = model.num_experts, model.expert_mlp_dim or model.mlp_dim
        per_layer.append(("block_sparse_moe.gate.weight", ("mlp", "router", "kernel"), (e, d), (d, e), True))
    experts = [("w1", "gate", (f, d), (d, f)), ("w3", "up", (f, d), (d, f)), ("w2", "down", (d, f), (f, d))]
    for i in range(model.num_layers):
        # Scanned layers are one stacked leaf per weight, indexed by layer on its first axis.
        prefix, layer = ("layers", i) if model.scan_layers else (f"layers_{i}", None)
        for name, path, hf_shape, shape, transpose in per_layer:
            maps.append(TensorMap(f"model.layers.{i}.{name}", (prefix, *path), layer, hf_shape,
                                  shape, transpose))
        for j in range(model.num_experts):  # Stacked [experts, in, out] after the layer axis.
            maps.extend(TensorMap(f"model.layers.{i}.block_sparse_moe.experts.{j}.{hf}.weight", (prefix, "mlp", leaf),
                                  layer, hf_shape, shape, True, expert=j, num_experts=model.num_experts)
                        for hf, leaf, hf_shape, shape in experts)
    maps.append(TensorMap("model.norm.weight", ("final_norm", "scale"), None, (d,), (d,), False))
    if not model.tie_embeddings:
        maps.append(TensorMap("lm_head.weight", ("lm_head",), None, (v, d), (v, d), False))
    return maps
