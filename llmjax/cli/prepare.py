"""`llmjax-prepare --input PATH [--input PATH ...] --out DIR [...]`: raw text to token shards.

Rerunning an interrupted command finishes it: finished units are kept and skipped.
Train on the result with `--config.data.source=DIR` (or several with `--config.data.mixture`).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from absl import app, flags

from llmjax.cli.app import run as run_app
from llmjax.errors import FlagError
from llmjax.data.prepare import PrepareOptions, prepare
from llmjax.train import objectives

_INPUT = flags.DEFINE_multi_string("input", None, "A file, directory or glob pattern of .txt / .jsonl / "
                                   ".parquet inputs (optionally .gz or .zst); repeat for more.")
_OUT = flags.DEFINE_string("out", None, "Directory of the prepared dataset.")
_PATTERN = flags.DEFINE_string("pattern", "**/*", "Files to read inside an input directory (glob).")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "JSONL key / Parquet column holding the text.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "A local tokenizer.json or SentencePiece .model "
                                 "to use; empty trains a byte-level BPE of --vocab_size tokens.")
_EOS_ID = flags.DEFINE_integer("eos_id", -1, "With --tokenizer: the token id that ends a document (-1: "
                               "the tokenizer's end-of-text token, found by its name).")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 8192, "Size of the trained tokenizer.")
_SAMPLE_MB = flags.DEFINE_float("tokenizer_sample_mb", 256.0, "Training text the tokenizer learns from, at most.")
_VAL_PERCENT = flags.DEFINE_float("val_percent", 2.0, "Percent of documents held out for validation.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Tokenizing processes (0 = one per CPU core).")
_SHARD_MB = flags.DEFINE_float("shard_mb", 64.0, "Input megabytes per shard, at most.")
_MAX_FILES = flags.DEFINE_integer("max_files", 0, "Read only the first N input files (0 = all).")
_OBJECTIVE = flags.DEFINE_multi_enum(
    "objective", [], [name for name in objectives.names() if objectives.get(name).special_tokens],
    "Also train the special tokens this objective needs into the tokenizer, as llmjax-train does: a mask "
    "token (mlm, BERT) or 100 sentinels (span, T5). Repeat it for a dataset several objectives read.")
flags.mark_flags_as_required(["input", "out"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name, value in (("vocab_size", _VOCAB_SIZE.value), ("shard_mb", _SHARD_MB.value),
                        ("tokenizer_sample_mb", _SAMPLE_MB.value)):
        if value <= 0:
            raise FlagError(f"--{name}={value} must be positive.")
    if not 0 < _VAL_PERCENT.value < 100:
        raise FlagError(f"--val_percent={_VAL_PERCENT.value}: must be in (0, 100), since training evaluates "
                        f"on the held-out documents; the default is 2.")
    if _WORKERS.value < 0 or _MAX_FILES.value < 0:
        raise FlagError("--workers and --max_files must be >= 0.")
    if _TOKENIZER.value and (flags.FLAGS["vocab_size"].present or _OBJECTIVE.value):
        raise FlagError("--vocab_size and --objective shape the tokenizer llmjax trains; with --tokenizer the "
                        "given one is used as it is: drop them (or --tokenizer).")
    if _EOS_ID.value >= 0 and not _TOKENIZER.value:
        raise FlagError("--eos_id names a token of the tokenizer given with --tokenizer; give that too, "
                        "or drop --eos_id (a trained tokenizer has its own).")
    options = PrepareOptions(
        inputs=tuple(_INPUT.value), pattern=_PATTERN.value, text_field=_TEXT_FIELD.value,
        tokenizer=_TOKENIZER.value, eos_id=_EOS_ID.value, vocab_size=_VOCAB_SIZE.value, tokenizer_sample_mb=_SAMPLE_MB.value,
        val_percent=_VAL_PERCENT.value, max_files=_MAX_FILES.value, shard_mb=_SHARD_MB.value,
        workers=_WORKERS.value,
        special_tokens=tuple(token for name in _OBJECTIVE.value for token in objectives.get(name).special_tokens))
    signal.signal(signal.SIGTERM, _stop)
    try:
        prepare(options, Path(_OUT.value).expanduser(), log=lambda *a: print(*a, flush=True),
                progress=True)
    except KeyboardInterrupt as interrupt:
        print("\nerror: interrupted; the finished units are kept: rerun the same command to finish.",
              file=sys.stderr, flush=True)
        sys.exit(143 if isinstance(interrupt, _Terminated) else 130)  # The shells' 128 + signal.


class _Terminated(KeyboardInterrupt):
    pass


def _stop(signum, frame) -> None:
    """SIGTERM (a scheduler, `kill`) stops preparation as Ctrl-C does."""
    raise _Terminated


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
