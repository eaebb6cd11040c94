"""T5 (Raffel et al. 2020; v1.1's gated-GELU MLP): an encoder-decoder Transformer with relative
position buckets, pretrained by span corruption. model.py is the math, spec.py its config
section, flops.py its FLOPs formula, hf.py its map to transformers' T5ForConditionalGeneration,
presets.py its named shapes."""

from llmjax.model.family import Family, lazy
from llmjax.model.t5 import flops
from llmjax.model.t5.presets import PRESETS
from llmjax.model.t5.spec import T5Spec

FAMILY = Family(name="t5", spec=T5Spec, flops=flops, presets=PRESETS,
                math=lazy("llmjax.model.t5.model", "MATH"), hf=lazy("llmjax.model.t5.hf"),
                objectives=("span", "seq2seq"), lora_targets="q,v")
