"""BERT (Devlin et al. 2019): a bidirectional post-LayerNorm encoder with learned positions and
token types, a GELU MLP and biases everywhere, pretrained by masked language modelling through
a head tied to the embeddings. model.py is the math, spec.py its config section, flops.py its
FLOPs formula, hf.py its map to transformers' BertForMaskedLM, presets.py its named shapes."""

from llmjax.model.bert import flops
from llmjax.model.bert.presets import PRESETS
from llmjax.model.bert.spec import BertSpec
from llmjax.model.family import Family, lazy

FAMILY = Family(name="bert", spec=BertSpec, flops=flops, presets=PRESETS,
                math=lazy("llmjax.model.bert.model", "MATH"), hf=lazy("llmjax.model.bert.hf"),
                objectives=("mlm", "classify"), pooling="first")
