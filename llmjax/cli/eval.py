"""`llmjax-eval --workdir RUN [--step S] [--data DIR[,DIR...]] [--batches N] [--out FILE]`.

Evaluates any saved checkpoint on held-out data without touching the run: loss, perplexity
and bits per byte, per dataset. Without --data, the run's own validation split.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags, logging

from llmjax.cli.app import run as run_app
from llmjax.errors import FlagError

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_DATA = flags.DEFINE_string("data", "", "Datasets to evaluate on, comma-separated: prepared datasets "
                            "(llmjax-prepare), text directories or 'stdlib'. Default: the run's own.")
_BATCHES = flags.DEFINE_integer("batches", None, "Validation batches per dataset (default: the run's "
                                "train.eval_batches).")
_OUT = flags.DEFINE_string("out", "", "Also write the results to this JSON file.")
flags.mark_flags_as_required(["workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _BATCHES.value is not None and _BATCHES.value < 1:
        raise FlagError(f"--batches={_BATCHES.value} must be at least 1.")
    logging.set_verbosity(logging.ERROR)  # Orbax warns that a read-only checkpoint is read-only.
    from llmjax.train.evaluate import evaluate_run  # noqa: PLC0415 - flags first, so --help is quick.

    results = evaluate_run(_WORKDIR.value, _STEP.value, _DATA.value, _BATCHES.value, log=print)
    step = results.pop("step")
    for name, values in results.items():
        print(f"step {step} | {name} | loss {values['loss']:.4f} | ppl {values['perplexity']:.2f} "
              f"| bits/byte {values['bits_per_byte']:.4f}")
    if _OUT.value:
        Path(_OUT.value).write_text(json.dumps({"workdir": _WORKDIR.value, "step": step, "results": results},
                                               indent=1))


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
