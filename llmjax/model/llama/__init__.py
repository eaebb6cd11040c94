"""Llama (Touvron et al. 2023): pre-RMSNorm decoder with RoPE, grouped-query attention and
SwiGLU. model.py is the math, spec.py its config section, flops.py its FLOPs formula, hf.py
its map to transformers' LlamaForCausalLM, presets.py its named shapes."""

from llmjax.model.llama import flops
from llmjax.model.llama.presets import PRESETS
from llmjax.model.llama.spec import LlamaSpec
from llmjax.model.family import Family, lazy

FAMILY = Family(name="llama", spec=LlamaSpec, flops=flops, presets=PRESETS,
                math=lazy("llmjax.model.llama.model", "MATH"), hf=lazy("llmjax.model.llama.hf"),
                objectives=("causal_lm", "prefix_lm", "classify", "sft"))
