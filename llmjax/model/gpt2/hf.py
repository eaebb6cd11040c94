"""How an llmjax GPT-2 corresponds to a Hugging Face `GPT2LMHeadModel`: the config fields and,
for every tensor, its HF name, its llmjax parameter path and the reshape between the two.

No tensor needs a transpose. GPT-2's projections are `Conv1D` modules whose weights are stored
[in_features, out_features], the order of llmjax's kernels (unlike `nn.Linear`'s [out, in]).
The fused `c_attn` [d, 3d] splits its outputs into (query | key | value) and each of those into
heads, which is llmjax's qkv kernel [d, 3, heads, head_dim] read row-major; `c_proj` [d, d]
takes the heads concatenated in the same order, llmjax's [heads, head_dim, d]. So every tensor
converts by a reshape alone.
"""

from __future__ import annotations

from llmjax.interop.tensor_map import InteropError, TensorMap, refuse_unsupported

MODEL_TYPE = "gpt2"
BASE_MODEL_PREFIX = "transformer."  # Absent from checkpoints saved from GPT2Model.
# The causal-mask buffers older transformers saved in each attention layer (recomputed here),
# and the output matrix that some tied checkpoints still store (identical to the embedding).
OPTIONAL_TENSORS = (".attn.bias", ".attn.masked_bias", "lm_head.weight")

# GPT2Config's own names, and the generic ones its attribute_map also accepts in config.json.
_REQUIRED = {"vocab_size": "vocab_size", "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
             "n_head": "num_attention_heads", "n_positions": "max_position_embeddings"}
# HF config fields that select behaviour llmjax does not implement, with the value llmjax has
# (GPT2Config's default, which an absent field takes). `reorder_and_upcast_attn` is not here:
# it only reorders the scaling of the fp32 attention scores, which llmjax computes in fp32.
_UNSUPPORTED_IF_SET = {
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}
# transformers' names for GELU's tanh approximation (flax's `gelu(approximate=True)`), one
# function whichever kernel computes it.
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _field(hf: dict, name: str):
    return hf[name] if name in hf else hf.get(_REQUIRED[name])


def model_overrides(hf: dict) -> dict:
    """`config.model` fields of an HF GPT-2 config.json; refuses anything llmjax would not
    reproduce exactly, before a tensor is read."""
    refuse_unsupported(hf, _UNSUPPORTED_IF_SET)
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _TANH_GELU:
        raise InteropError(f"config.json: activation_function={activation!r} is not supported "
                           f"(llmjax's GPT-2 MLP is GELU with the tanh approximation, "
                           f"activation_function='gelu_new').")
    missing = [key for key in _REQUIRED if _field(hf, key) is None]
    if missing:
        raise InteropError(f"config.json: lacks {', '.join(missing)}; is it a complete GPT-2 config?")
    d_model, heads = _field(hf, "n_embd"), _field(hf, "n_head")
    if d_model % heads:
        raise InteropError(f"config.json: n_embd={d_model} is not divisible by n_head={heads}; "
                           f"GPT-2 heads are n_embd / n_head wide.")
    return dict(family="gpt2", vocab_size=hf["vocab_size"], d_model=d_model,
                num_layers=_field(hf, "n_layer"), num_heads=heads, head_dim=d_model // heads,
                mlp_dim=hf.get("n_inner") or 4 * d_model, max_seq_len=_field(hf, "n_positions"),
                norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


def hf_config(model, dtype: str, special_ids: dict) -> dict:
    """config.json of a `GPT2LMHeadModel` equal to the llmjax model `model` (config.model).
    Dropouts are 0: llmjax trains without any."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": model.vocab_size, "n_embd": model.d_model, "n_layer": model.num_layers,
        "n_head": model.num_heads, "n_inner": model.mlp_dim, "n_positions": model.max_seq_len,
        "layer_norm_epsilon": model.norm_eps, "tie_word_embeddings": model.tie_embeddings,
        "activation_function": "gelu_new", "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "add_cross_attention": False, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "initializer_range": model.init_scale, "use_cache": True, "torch_dtype": dtype,
        **special_ids,
    }


def tensor_maps(model) -> list[TensorMap]:
    """Every tensor of the HF checkpoint of `model` (config.model), in HF's order."""
    d, n, h, f, v = model.d_model, model.num_heads, model.head_dim, model.mlp_dim, model.vocab_size
    maps = [TensorMap("transformer.wte.weight", ("embed", "embedding"), None, (v, d), (v, d), False),
            TensorMap("transformer.wpe.weight", ("position_embed", "embedding"), None,
                      (model.max_seq_len, d), (model.max_seq_len, d), False)]
    per_layer = [
        ("ln_1.weight", ("attention_norm", "scale"), (d,), (d,)),
        ("ln_1.bias", ("attention_norm", "bias"), (d,), (d,)),
        ("attn.c_attn.weight", ("attention", "qkv", "kernel"), (d, 3 * d), (d, 3, n, h)),
        ("attn.c_attn.bias", ("attention", "qkv", "bias"), (3 * d,), (3, n, h)),
        ("attn.c_proj.weight", ("attention", "out", "kernel"), (d, d), (n, h, d)),
        ("attn.c_proj.bias", ("attention", "out", "bias"), (d,), (d,)),
        ("ln_2.weight", ("mlp_norm", "scale"), (d,), (d,)),
        ("ln_2.bias", ("mlp_norm", "bias"), (d,), (d,)),
        ("mlp.c_fc.weight", ("mlp", "fc", "kernel"), (d, f), (d, f)),
        ("mlp.c_fc.bias", ("mlp", "fc", "bias"), (f,), (f,)),
        ("mlp.c_proj.weight", ("mlp", "proj", "kernel"), (f, d), (f, d)),
        ("mlp.c_proj.bias", ("mlp", "proj", "bias"), (d,), (d,)),
    ]
    for i in range(model.num_layers):
        # Scanned layers are one stacked leaf per weight, indexed by layer on its first axis.
        prefix, layer = ("layers", i) if model.scan_layers else (f"layers_{i}", None)
        for name, path, hf_shape, shape in per_layer:
            maps.append(TensorMap(f"transformer.h.{i}.{name}", (prefix, *path), layer, hf_shape,
                                  shape, False))
    maps += [TensorMap("transformer.ln_f.weight", ("final_norm", "scale"), None, (d,), (d,), False),
             TensorMap("transformer.ln_f.bias", ("final_norm", "bias"), None, (d,), (d,), False)]
    if not model.tie_embeddings:
        maps.append(TensorMap("lm_head.weight", ("lm_head",), None, (v, d), (v, d), False))
    return maps
