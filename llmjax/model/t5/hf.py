"""How an llmjax T5 corresponds to a Hugging Face `T5ForConditionalGeneration`: the config
fields and, for every tensor, its HF name, its llmjax parameter path and the reshape between
the two.

HF's projections are `nn.Linear` ([out, in]), so every kernel is transposed; q, k and v split
their outputs into heads (llmjax's [d, heads, head_dim]) and o's inputs are the heads
concatenated ([heads, head_dim, d]). Each stack's relative position table is the first
block's `relative_attention_bias` in HF (the other blocks reuse its bias), a parameter of the
stack in llmjax. transformers 5 ties T5's output projection to the shared embedding whatever
the checkpoint says, and scales the decoder's output by d_model^-0.5 unless the config says
`tie_word_embeddings: false` (T5 v1.1) or `scale_decoder_outputs: false`; llmjax's
`rescale_output` is that switch.
"""

from __future__ import annotations

from llmjax.interop.tensor_map import InteropError, TensorMap, refuse_unsupported
from llmjax.model.t5.spec import FEED_FORWARDS

MODEL_TYPE = "t5"
# Copies of the shared embedding some checkpoints store (and transformers 5 ties to it).
OPTIONAL_TENSORS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")

_REQUIRED = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
# HF config fields that select behaviour llmjax does not implement, with the value llmjax has.
_UNSUPPORTED_IF_SET = {"is_encoder_decoder": True, "is_decoder": False}


def model_overrides(hf: dict) -> dict:
    """`config.model` fields of an HF T5 config.json; refuses anything llmjax would not
    reproduce exactly, before a tensor is read."""
    refuse_unsupported(hf, _UNSUPPORTED_IF_SET)
    feed_forward = hf.get("feed_forward_proj", "relu")  # transformers' default: the original T5's.
    if feed_forward not in FEED_FORWARDS:
        raise InteropError(f"config.json: feed_forward_proj={feed_forward!r} is not supported; llmjax's T5 has "
                           f"{' and '.join(FEED_FORWARDS)} (T5 v1.1's and the original T5's MLPs).")
    missing = [key for key in _REQUIRED if hf.get(key) is None]
    if missing:
        raise InteropError(f"config.json: lacks {', '.join(missing)}; is it a complete T5 config?")
    if hf.get("num_decoder_layers") not in (None, hf["num_layers"]):
        raise InteropError(f"config.json: num_decoder_layers={hf['num_decoder_layers']} differs from "
                           f"num_layers={hf['num_layers']}; llmjax's T5 has as many blocks a side.")
    rescale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    return dict(family="t5", vocab_size=hf["vocab_size"], d_model=hf["d_model"], num_layers=hf["num_layers"],
                num_heads=hf["num_heads"], head_dim=hf["d_kv"], mlp_dim=hf["d_ff"], feed_forward=feed_forward,
                relative_buckets=hf.get("relative_attention_num_buckets", 32),
                relative_max_distance=hf.get("relative_attention_max_distance", 128),
                norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)), tie_embeddings=True,
                rescale_output=bool(rescale), max_seq_len=int(hf.get("n_positions") or 512))


def hf_config(model, dtype: str, special_ids: dict) -> dict:
    """config.json of a `T5ForConditionalGeneration` equal to the llmjax model `model`
    (config.model). Dropouts are 0: llmjax trains without any. The decoder starts from the
    padding token, as llmjax's span corruption and T5 do."""
    if not model.tie_embeddings:
        raise InteropError("a T5 with an output projection of its own (model.tie_embeddings=False) has "
                           "no transformers 5 equivalent: its T5ForConditionalGeneration always ties the "
                           "output to the shared embedding; train with model.tie_embeddings=True.")
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": model.vocab_size, "d_model": model.d_model, "d_kv": model.head_dim,
        "d_ff": model.mlp_dim, "num_layers": model.num_layers, "num_decoder_layers": model.num_layers,
        "num_heads": model.num_heads, "relative_attention_num_buckets": model.relative_buckets,
        "relative_attention_max_distance": model.relative_max_distance,
        "layer_norm_epsilon": model.norm_eps, "feed_forward_proj": model.feed_forward,
        "is_encoder_decoder": True, "tie_word_embeddings": model.rescale_output,
        "dropout_rate": 0.0, "initializer_factor": model.init_scale, "n_positions": model.max_seq_len,
        "torch_dtype": dtype, **special_ids, "decoder_start_token_id": special_ids.get("pad_token_id"),
    }


def _attention(hf_prefix: str, path: tuple[str, ...], d: int, n: int, h: int) -> list[tuple]:
    return [(f"{hf_prefix}.{name}.weight", (*path, name, "kernel"), (n * h, d), (d, n, h), True)
            for name in ("q", "k", "v")] + [(f"{hf_prefix}.o.weight", (*path, "o", "kernel"), (d, n * h),
                                             (n, h, d), True)]


def tensor_maps(model) -> list[TensorMap]:
    """Every tensor of the HF checkpoint of `model` (config.model), in HF's order."""
    d, n, h, f, v = model.d_model, model.num_heads, model.head_dim, model.mlp_dim, model.vocab_size
    inputs = ("wi",) if model.feed_forward == "relu" else ("wi_0", "wi_1")
    mlp = [(f"DenseReluDense.{name}.weight", ("mlp", name, "kernel"), (f, d), (d, f), True) for name in inputs] + \
        [("DenseReluDense.wo.weight", ("mlp", "wo", "kernel"), (d, f), (f, d), True)]
    blocks = {
        "encoder": [*_attention("layer.0.SelfAttention", ("attention",), d, n, h),
                    ("layer.0.layer_norm.weight", ("attention_norm", "scale"), (d,), (d,), False),
                    *[(f"layer.1.{name}", *rest) for name, *rest in mlp],
                    ("layer.1.layer_norm.weight", ("mlp_norm", "scale"), (d,), (d,), False)],
        "decoder": [*_attention("layer.0.SelfAttention", ("attention",), d, n, h),
                    ("layer.0.layer_norm.weight", ("attention_norm", "scale"), (d,), (d,), False),
                    *_attention("layer.1.EncDecAttention", ("cross_attention",), d, n, h),
                    ("layer.1.layer_norm.weight", ("cross_attention_norm", "scale"), (d,), (d,), False),
                    *[(f"layer.2.{name}", *rest) for name, *rest in mlp],
                    ("layer.2.layer_norm.weight", ("mlp_norm", "scale"), (d,), (d,), False)],
    }
    maps = [TensorMap("shared.weight", ("embed", "embedding"), None, (v, d), (v, d), False)]
    for side, per_layer in blocks.items():
        maps.append(TensorMap(f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                              (f"{side}_relative_bias",), None, (model.relative_buckets, n),
                              (model.relative_buckets, n), False))
        for i in range(model.num_layers):
            # Scanned layers are one stacked leaf per weight, indexed by layer on its first axis.
            prefix, layer = ("layers", i) if model.scan_layers else (f"layers_{i}", None)
            maps += [TensorMap(f"{side}.block.{i}.{name}", (side, prefix, *path), layer, hf_shape, shape, transpose)
                     for name, path, hf_shape, shape, transpose in per_layer]
        maps.append(TensorMap(f"{side}.final_layer_norm.weight", (side, "final_norm", "scale"), None, (d,), (d,),
                              False))
    return maps
