"""`llmjax-export --workdir RUN [--step S] --format hf --out DIR`: a run as a Hugging Face model.

The result loads offline with `AutoModelForCausalLM.from_pretrained(DIR)` (or the family's
model class) and `AutoTokenizer.from_pretrained(DIR)`. A fine-tuning run exports the model it
applies, LoRA adapters merged in; a LoRA run also gets DIR/adapter, the adapters in PEFT's
format, and DIR/base, the model they adapt:
`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DIR/base), DIR/adapter)`.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging

from llmjax.cli.app import run as run_app
from llmjax.errors import FlagError

_WORKDIR = flags.DEFINE_string("workdir", None, "The run to export.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_FORMAT = flags.DEFINE_enum("format", "hf", ["hf"], "Output format: hf (a transformers model directory: "
                            "Llama, Mixtral, GPT-2, BERT or T5).")
_OUT = flags.DEFINE_string("out", None, "Directory to write; must be new, empty, or this same export.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "Tensor dtype (default: an imported run's own, else the parameter dtype).")
_MAX_SHARD = flags.DEFINE_string("max_shard_size", "5GB",
                                 "Split model.safetensors into shards of at most this size.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from llmjax.interop.export import export_hf  # noqa: PLC0415 - flags first: --help is quick.
    from llmjax.interop.safetensors_io import parse_size  # noqa: PLC0415

    try:
        max_shard = parse_size(_MAX_SHARD.value)
    except ValueError:
        raise FlagError(f"--max_shard_size {_MAX_SHARD.value}: give a size such as 5GB or 200MB.") from None
    logging.set_verbosity(logging.ERROR)  # Orbax warns that it opens the run read-only.
    export_hf(Path(_WORKDIR.value), Path(_OUT.value), _STEP.value, _DTYPE.value, max_shard)


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
