"""`llmjax-import --hf DIR --workdir RUN`: a local Hugging Face Llama checkpoint as an llmjax run.

RUN then holds config.json, the tokenizer and checkpoint step 0 (parameters only); continue
pretraining from it with `llmjax-train --config=configs/imported.py:RUN --workdir NEW
--config.checkpoint.init_from=RUN`.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from llmjax.cli.app import run as run_app

_HF = flags.DEFINE_string("hf", None, "Directory written by save_pretrained (safetensors).")
_WORKDIR = flags.DEFINE_string("workdir", None, "New run directory to create.")
flags.mark_flags_as_required(["hf", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from llmjax.interop.import_hf import import_hf  # noqa: PLC0415 - flags first: --help is quick.

    import_hf(Path(_HF.value), Path(_WORKDIR.value))


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
