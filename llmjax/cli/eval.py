"""`llmjax-eval --workdir RUN [--step S] [--data DIR[,DIR...]] [--glob G] [--batches N] [--out FILE] [--per_position]`.

Evaluates any saved checkpoint on held-out data without touching the run: loss, perplexity
and bits per byte, per dataset. Without --data, the run's own validation split. With
--per_position (and --out), also the loss at each position in the context.
"""

from __future__ import annotations

import json

from absl import app, flags, logging

from llmjax.cli.app import output_file, run as run_app
from llmjax.errors import FlagError

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_DATA = flags.DEFINE_string("data", "", "Datasets to evaluate on, comma-separated: prepared datasets "
                            "(llmjax-prepare), text directories or 'stdlib'. Default: the run's own.")
_GLOB = flags.DEFINE_string("glob", "", "Files to read inside a --data text directory (default: the run's "
                            "data.glob, e.g. '**/*.py'; '**/*.txt' for a directory of text files).")
_BATCHES = flags.DEFINE_integer("batches", None, "Validation batches per dataset (default: the run's "
                                "train.eval_batches).")
_OUT = flags.DEFINE_string("out", "", "Also write the results to this JSON file.")
_PER_POSITION = flags.DEFINE_boolean("per_position", False, "Also the loss at each position in the "
                                     "context (0 .. data.seq_len-1), written to --out.")
flags.mark_flags_as_required(["workdir"])


# What a result line shows of the objective's metrics, where it has them (MLM has accuracy and
# no bits per byte).
SHOWN = (("loss", "loss", ".4f"), ("perplexity", "ppl", ".2f"), ("accuracy", "accuracy", ".4f"),
         ("macro_f1", "macro-F1", ".4f"), ("bleu", "BLEU", ".2f"), ("chrf", "chrF", ".2f"),
         ("rouge_l", "ROUGE-L", ".2f"), ("bits_per_byte", "bits/byte", ".4f"))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _BATCHES.value is not None and _BATCHES.value < 1:
        raise FlagError(f"--batches={_BATCHES.value} must be at least 1.")
    logging.set_verbosity(logging.ERROR)  # Orbax warns that a read-only checkpoint is read-only.
    from llmjax.train.evaluate import evaluate_run  # noqa: PLC0415 - flags first, so --help is quick.

    if _PER_POSITION.value and not _OUT.value:
        raise FlagError("--per_position writes its losses to the JSON file of --out; give one.")
    out = output_file("out", _OUT.value) if _OUT.value else None
    if out and out.exists() and not is_result_file(out):
        raise FlagError(f"--out {_OUT.value} exists and is not an llmjax-eval result; writing there would lose "
                        f"it: give a new file.")
    results = evaluate_run(_WORKDIR.value, _STEP.value, _DATA.value, _BATCHES.value, log=print,
                           per_position=_PER_POSITION.value, glob=_GLOB.value)
    step, positions = results.pop("step"), results.pop("per_position", {})
    for name, values in results.items():
        print(f"step {step} | {name} | " + " | ".join(f"{label} {values[key]:{form}}" for key, label, form in SHOWN
                                                    if key in values))
    for name, curve in positions.items():
        shown = [p for p in (0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023) if p < len(curve["loss"])]
        print(f"step {step} | {name} | loss at position " + ", ".join(f"{p}: {curve['loss'][p]:.3f}" for p in shown))
    if out:
        partial = out.with_name(out.name + ".partial")  # Never a half-written file at --out.
        partial.write_text(json.dumps({"workdir": _WORKDIR.value, "step": step, "results": results,
                                       **({"per_position": positions} if positions else {})}, indent=1))
        partial.replace(out)


def is_result_file(path) -> bool:
    """Whether `path` holds what --out writes (an earlier evaluation, replaced by this one)."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and {"workdir", "step", "results"} <= value.keys()


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
