"""GPT-2 (Radford et al. 2019): pre-LayerNorm decoder with learned absolute positions, biases
on every projection, a GELU (tanh) MLP and tied embeddings. model.py is the math, spec.py its
config section, flops.py its FLOPs formula, hf.py its map to transformers' GPT2LMHeadModel,
presets.py its named shapes."""

from llmjax.model.gpt2 import flops
from llmjax.model.gpt2.presets import PRESETS
from llmjax.model.gpt2.spec import GPT2Spec
from llmjax.model.family import Family, lazy

FAMILY = Family(name="gpt2", spec=GPT2Spec, flops=flops, presets=PRESETS,
                math=lazy("llmjax.model.gpt2.model", "MATH"), hf=lazy("llmjax.model.gpt2.hf"),
                objectives=("causal_lm", "prefix_lm", "classify", "sft"),
                lora_targets="qkv")  # One fused projection, as PEFT adapts GPT-2's c_attn.
