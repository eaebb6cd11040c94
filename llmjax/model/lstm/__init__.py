"""The LSTM language model (Hochreiter & Schmidhuber 1997; as an LM, Zaremba et al. 2014 and
Jozefowicz et al. 2016): the recurrent baseline the Transformer replaced, trained by the same
trainer on the same data so the two compare on equal terms. model.py is the math, spec.py its
config section, flops.py its FLOPs formula, presets.py its named shapes. It has no Hugging Face
counterpart to import from or export to."""

from llmjax.model.family import Family, lazy
from llmjax.model.lstm import flops
from llmjax.model.lstm.presets import PRESETS
from llmjax.model.lstm.spec import LSTMSpec

FAMILY = Family(name="lstm", spec=LSTMSpec, flops=flops, presets=PRESETS,
                math=lazy("llmjax.model.lstm.model", "MATH"), objectives=("causal_lm", "classify", "sft"),
                lora_targets="")
