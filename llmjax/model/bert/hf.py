"""How an llmjax BERT corresponds to a Hugging Face `BertForMaskedLM`: the config fields and,
for every tensor, its HF name, its llmjax parameter path and the reshape between the two.

HF's projections are `nn.Linear` ([out, in]), so every kernel is transposed; the query, key and
value weights [d, d] split their outputs into heads, llmjax's [d, heads, head_dim], and the
attention output's inputs are the heads concatenated, llmjax's [heads, head_dim, d]. The MLM
decoder's weight is the word embedding and its bias `cls.predictions.bias` when tied; untied,
transformers' decoder has a weight and a bias of its own (`cls.predictions.decoder.*`), which
are what its forward pass reads, and `cls.predictions.bias` is left unused.
"""

from __future__ import annotations

from llmjax.interop.tensor_map import InteropError, TensorMap, refuse_unsupported

MODEL_TYPE = "bert"
# The tied decoder weight and bias that some checkpoints store (copies of the embedding and of
# cls.predictions.bias), the bias an untied decoder leaves unused, the position-id buffer older
# versions saved, and the pooler and next-sentence head of BertForPreTraining checkpoints,
# which MLM does not use.
OPTIONAL_TENSORS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "cls.predictions.bias",
                    "embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias",
                    "cls.seq_relationship.weight", "cls.seq_relationship.bias")

_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "max_position_embeddings")
# HF config fields that select behaviour llmjax does not implement, with the value llmjax has.
_UNSUPPORTED_IF_SET = {"hidden_act": "gelu", "position_embedding_type": "absolute",
                       "is_decoder": False, "add_cross_attention": False}


def model_overrides(hf: dict) -> dict:
    """`config.model` fields of an HF BERT config.json; refuses anything llmjax would not
    reproduce exactly, before a tensor is read."""
    refuse_unsupported(hf, _UNSUPPORTED_IF_SET)
    missing = [key for key in _REQUIRED if hf.get(key) is None]
    if missing:
        raise InteropError(f"config.json: lacks {', '.join(missing)}; is it a complete BERT config?")
    d_model, heads = hf["hidden_size"], hf["num_attention_heads"]
    if d_model % heads:
        raise InteropError(f"config.json: hidden_size={d_model} is not divisible by "
                           f"num_attention_heads={heads}; BERT heads are hidden_size / heads wide.")
    return dict(family="bert", vocab_size=hf["vocab_size"], d_model=d_model,
                num_layers=hf["num_hidden_layers"], num_heads=heads, head_dim=d_model // heads,
                mlp_dim=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
                type_vocab_size=int(hf.get("type_vocab_size", 2)),
                norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


def hf_config(model, dtype: str, special_ids: dict) -> dict:
    """config.json of a `BertForMaskedLM` equal to the llmjax model `model` (config.model).
    Dropouts are 0: llmjax trains without any."""
    if not model.type_vocab_size:
        raise InteropError("a BERT without token types (model.type_vocab_size=0) has no Hugging Face "
                           "equivalent (BertEmbeddings always adds one); train with type_vocab_size >= 1.")
    return {
        "architectures": ["BertForMaskedLM"], "model_type": "bert",
        "vocab_size": model.vocab_size, "hidden_size": model.d_model,
        "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_heads,
        "intermediate_size": model.mlp_dim, "hidden_act": "gelu",
        "max_position_embeddings": model.max_seq_len, "type_vocab_size": model.type_vocab_size,
        "layer_norm_eps": model.norm_eps, "position_embedding_type": "absolute",
        "tie_word_embeddings": model.tie_embeddings, "is_decoder": False, "add_cross_attention": False,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "initializer_range": model.init_scale, "torch_dtype": dtype, **special_ids,
    }


def tensor_maps(model) -> list[TensorMap]:
    """Every tensor of the HF checkpoint of `model` (config.model), in HF's order."""
    d, n, h, f, v = model.d_model, model.num_heads, model.head_dim, model.mlp_dim, model.vocab_size
    maps = [TensorMap("bert.embeddings.word_embeddings.weight", ("embed", "embedding"), None, (v, d), (v, d), False),
            TensorMap("bert.embeddings.position_embeddings.weight", ("position_embed", "embedding"), None,
                      (model.max_seq_len, d), (model.max_seq_len, d), False)]
    if model.type_vocab_size:
        maps.append(TensorMap("bert.embeddings.token_type_embeddings.weight", ("type_embed", "embedding"), None,
                              (model.type_vocab_size, d), (model.type_vocab_size, d), False))
    maps += [TensorMap("bert.embeddings.LayerNorm.weight", ("embed_norm", "scale"), None, (d,), (d,), False),
             TensorMap("bert.embeddings.LayerNorm.bias", ("embed_norm", "bias"), None, (d,), (d,), False)]
    per_layer = [(f"attention.self.{name}.{kind}", ("attention", name, kind), hf_shape, shape, kind == "weight")
                 for name in ("query", "key", "value")
                 for kind, hf_shape, shape in (("weight", (d, d), (d, n, h)), ("bias", (d,), (n, h)))]
    per_layer += [
        ("attention.output.dense.weight", ("attention", "out", "kernel"), (d, d), (n, h, d), True),
        ("attention.output.dense.bias", ("attention", "out", "bias"), (d,), (d,), False),
        ("attention.output.LayerNorm.weight", ("attention_norm", "scale"), (d,), (d,), False),
        ("attention.output.LayerNorm.bias", ("attention_norm", "bias"), (d,), (d,), False),
        ("intermediate.dense.weight", ("mlp", "fc", "kernel"), (f, d), (d, f), True),
        ("intermediate.dense.bias", ("mlp", "fc", "bias"), (f,), (f,), False),
        ("output.dense.weight", ("mlp", "proj", "kernel"), (d, f), (f, d), True),
        ("output.dense.bias", ("mlp", "proj", "bias"), (d,), (d,), False),
        ("output.LayerNorm.weight", ("mlp_norm", "scale"), (d,), (d,), False),
        ("output.LayerNorm.bias", ("mlp_norm", "bias"), (d,), (d,), False),
    ]
    for i in range(model.num_layers):
        # Scanned layers are one stacked leaf per weight, indexed by layer on its first axis.
        prefix, layer = ("layers", i) if model.scan_layers else (f"layers_{i}", None)
        for name, path, hf_shape, shape, transpose in per_layer:
            path = tuple("kernel" if part == "weight" else part for part in path)
            maps.append(TensorMap(f"bert.encoder.layer.{i}.{name}", (prefix, *path), layer, hf_shape,
                                  shape, transpose))
    maps += [TensorMap("cls.predictions.transform.dense.weight", ("head", "kernel"), None, (d, d), (d, d), True),
             TensorMap("cls.predictions.transform.dense.bias", ("head", "bias"), None, (d,), (d,), False),
             TensorMap("cls.predictions.transform.LayerNorm.weight", ("head_norm", "scale"), None, (d,), (d,), False),
             TensorMap("cls.predictions.transform.LayerNorm.bias", ("head_norm", "bias"), None, (d,), (d,), False)]
    if model.tie_embeddings:
        maps.append(TensorMap("cls.predictions.bias", ("output_bias",), None, (v,), (v,), False))
    else:
        maps += [TensorMap("cls.predictions.decoder.weight", ("lm_head",), None, (v, d), (v, d), False),
                 TensorMap("cls.predictions.decoder.bias", ("output_bias",), None, (v,), (v,), False)]
    return maps
