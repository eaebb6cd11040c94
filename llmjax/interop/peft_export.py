"""A LoRA run's adapters as a PEFT adapter directory (`adapter_config.json`,
`adapter_model.safetensors`), for `peft.PeftModel.from_pretrained(base, DIR)`.

llmjax adapts a kernel W [layers, *in, *out] with A [layers, in, r] and B [layers, r, out] as
W + (alpha / r) (A B).reshape(W.shape); PEFT adapts a torch weight with
lora_A.weight [r, in] and lora_B.weight [out, r] as W + (alpha / r) lora_B.weight @ lora_A.weight
(transposed for GPT-2's `Conv1D`, stored [in, out]: `fan_in_fan_out`). A family's tensor map
turns a kernel into its HF weight by a row-major reshape to [in, out] and, for `nn.Linear`, a
transpose; the same reshape flattens A's inputs and B's outputs, so lora_A.weight = A^T and
lora_B.weight = B^T of each layer whatever the family (no family permutes rows: Llama's q and
k use the rotate-half RoPE layout on both sides). The scaling is PEFT's plain alpha / r
(`use_rslora: false`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from llmjax.interop.tensor_map import InteropError, TensorMap

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # What PeftModel puts before the wrapped model's module names.


def _module(m: TensorMap) -> str:
    """The torch module that holds the tensor ("model.layers.0.self_attn.q_proj")."""
    return m.hf_name.rsplit(".", 1)[0]


def adapted_maps(maps: list[TensorMap], adapters: dict) -> list[tuple[TensorMap, dict]]:
    """(tensor map, {"a", "b"} of the adapter) of every HF weight the run's adapters change:
    one per layer of each adapted kernel."""
    pairs = traverse_util.flatten_dict(adapters, is_leaf=lambda _, x: "a" in x and "b" in x)
    found = [(m, pairs[m.path[:-1]]) for m in maps if m.path[-1] == "kernel" and m.path[:-1] in pairs]
    missing = set(pairs) - {m.path[:-1] for m, _ in found}
    if missing:
        raise InteropError(f"LoRA adapters on {', '.join('/'.join(p) for p in sorted(missing))} have no "
                           f"Hugging Face weight to adapt; they cannot be exported for PEFT.")
    return found


def lora_weights(m: TensorMap, pair: dict) -> tuple[np.ndarray, np.ndarray]:
    """(lora_A.weight [r, in], lora_B.weight [out, r]) of one HF weight, in float32."""
    a, b = (np.asarray(pair[k] if m.layer is None else pair[k][m.layer], np.float32) for k in ("a", "b"))
    if len(m.hf_shape) != 2:
        raise InteropError(f"{m.hf_name}: a {len(m.hf_shape)}-d weight; PEFT adapts matrices only.")
    fan_in, fan_out = m.hf_shape[::-1] if m.transpose else m.hf_shape
    if a.shape[0] != fan_in or b.shape[1] != fan_out:
        raise InteropError(f"{m.hf_name} {m.hf_shape}: its LoRA adapter is A {a.shape}, B {b.shape}, which "
                           f"does not split it into {fan_in} inputs and {fan_out} outputs.")
    return np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)


def target_modules(maps: list[TensorMap], adapted: list[TensorMap]) -> list[str]:
    """PEFT's target_modules (a module matches a name it ends with): for each adapted module
    the shortest suffix of its name that matches adapted modules only (q_proj, c_attn; but
    attn.c_proj, where c_proj would also catch GPT-2's mlp.c_proj)."""
    modules, wanted = {_module(m) for m in maps}, {_module(m) for m in adapted}

    def shortest(name: str) -> str:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            suffix = ".".join(parts[-depth:])
            if all(other in wanted for other in modules if other == suffix or other.endswith("." + suffix)):
                return suffix
        return name
    return sorted({shortest(name) for name in wanted})


def task_type(hf_config: dict) -> str | None:
    """PEFT's task of the model class the export's config.json names (None: PEFT has no task
    for it, e.g. masked LM, and PeftModel wraps it as it is)."""
    architecture = (hf_config.get("architectures") or [""])[0]
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "CAUSAL_LM"
    if architecture.endswith("ForConditionalGeneration"):
        return "SEQ_2_SEQ_LM"
    return None


def write_adapter(directory: Path, adapters: dict, maps: list[TensorMap], finetune, hf_config: dict,
                  base: str | None) -> None:
    """Writes the PEFT adapter of `adapters` (a run's params["lora"]) for the HF model whose
    tensors `maps` lists and whose config.json is `hf_config`; `base` is the directory (or hub
    name) of the model the adapter applies to, PEFT's base_model_name_or_path."""
    found = adapted_maps(maps, adapters)
    if len({m.transpose for m, _ in found}) > 1:
        raise InteropError("the adapted weights mix torch Linear and Conv1D layouts; PEFT's fan_in_fan_out "
                           "is one setting for all of them.")
    tensors = {}
    for m, pair in found:
        tensors[f"{PREFIX}{_module(m)}.lora_A.weight"], tensors[f"{PREFIX}{_module(m)}.lora_B.weight"] = \
            lora_weights(m, pair)
    config = {
        "peft_type": "LORA", "task_type": task_type(hf_config), "base_model_name_or_path": base,
        "inference_mode": True, "r": finetune.lora_rank, "lora_alpha": finetune.lora_alpha,
        "lora_dropout": 0.0, "target_modules": target_modules(maps, [m for m, _ in found]),
        "fan_in_fan_out": not found[0][0].transpose, "bias": "none", "use_rslora": False,
        "modules_to_save": None, "init_lora_weights": True, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
