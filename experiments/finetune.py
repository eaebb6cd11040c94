"""Does pretraining help, and what does LoRA give up? The README's default run (runs/demo)
fine-tuned on each built-in task fully and, as the baseline pretraining must beat, the same
model from random initialisation for the same steps; on stdlib_package also with LoRA of rank 8
(configs/finetune.py's `lora`). `llmjax-report` tabulates accuracy and macro-F1
(classification), BLEU, chrF and ROUGE-L (generation), and plots them against the step.

    llmjax-sweep experiments/finetune.py --workdir runs/finetune && llmjax-report runs/finetune
"""

from llmjax.presets import finetune


def get_config(arg: str = "package"):
    return finetune(arg)


def get_sweep():
    return {"runs": [{"config": arg} for arg in ("package", "package,scratch", "package,lora",
                                                 "docstring", "docstring,scratch")]}
