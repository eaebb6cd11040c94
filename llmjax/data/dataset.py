"""Prepared datasets opened for reading, and the datasets a data config names.

`data.source` is "stdlib", a directory of raw text, or a prepared dataset (made by
`llmjax-prepare`); `data.mixture` ("DIR:WEIGHT,DIR:WEIGHT") names several. Raw text is prepared
on the fly into the cache, keyed by its contents' identity, under a file lock so that
concurrent runs on one machine prepare it once. Opening a dataset checks its files against
the checksums its manifest recorded, so that data changed on disk since (a flipped byte, a
truncated or deleted shard) stops a run before it trains or evaluates on it.
"""

from __future__ import annotations

import fcntl
import functools
import os
from pathlib import Path

import numpy as np

from llmjax.data.errors import DataError
from llmjax.data.jsonfile import read_json_object
from llmjax.config import parse_mixture
from llmjax.data import sources
from llmjax.data.prepare import (CHECKSUMS, MANIFEST, PLAN, SPLITS, PrepareError, PrepareOptions, check_vocab_size,
                                 dataset_key, prepare)
from llmjax.data.shards import TokenStream, file_checksum
from llmjax.data.tokenizer import TextTokenizer, load_from_dir


class DatasetError(DataError):
    """The data a config names cannot be used; the message names the problem and the fix."""


class Dataset:
    """A prepared dataset: its manifest, tokenizer and one token stream per split. Every field a
    reader uses is read here, so an edited manifest fails when opened (KeyError, TypeError or
    ValueError), not in the middle of a run."""

    def __init__(self, directory: Path, manifest: dict, name: str):
        self.directory, self.manifest, self.name = Path(directory), manifest, name
        tokenizer = manifest["tokenizer"]
        self.fingerprint, self.vocab_size = str(tokenizer["fingerprint"]), int(tokenizer["vocab_size"])
        self.eos_id, self.pad_id = int(tokenizer["eos_id"]), tokenizer["pad_id"]
        self.tokenizer_file = self.directory / tokenizer["file"]
        self.dtype = np.dtype(manifest["token_dtype"])
        if self.dtype.kind != "u":  # Token ids, as prepare.token_dtype writes them.
            raise ValueError(f"token_dtype {self.dtype} is not an unsigned integer type")
        self.shards = {split: [self.directory / s["file"] for s in manifest["splits"][split]["shards"]]
                       for split in SPLITS}
        self.tokens = {split: int(manifest["splits"][split]["tokens"]) for split in SPLITS}
        self.checksums = dict(manifest.get(CHECKSUMS, {}))
        self.unigram_entropy = float(manifest["unigram_entropy_nats"])

    @functools.cached_property
    def tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.tokenizer_file, self.eos_id)

    def stream(self, split: str) -> TokenStream:
        return TokenStream(self.shards[split], self.dtype)


def open_dataset(path, name: str | None = None) -> Dataset:
    directory = Path(path).expanduser()
    if not (directory / MANIFEST).is_file():
        if (directory / PLAN).is_file():
            raise DatasetError(f"{directory} is an unfinished preparation; rerun the same "
                               f"llmjax-prepare command to finish it.")
        raise DatasetError(f"{directory} is not a prepared dataset (no {MANIFEST}); make one with "
                           f"llmjax-prepare, or give a directory of raw text files.")
    manifest = read_json_object(directory / MANIFEST, DatasetError, _REPREPARE.format(directory))
    try:
        dataset = Dataset(directory, manifest, name or directory.name)
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{directory / MANIFEST} is not a manifest llmjax can read ({type(error).__name__}: "
                           f"{error}); {_REPREPARE.format(directory)}") from None
    _verify(directory, dataset.checksums)
    return dataset


_REPREPARE = ("delete {} and prepare it again (rerun the llmjax-prepare command that made it; a "
              "dataset in the cache is prepared again by the next run that needs it).")


def _verify(directory: Path, checksums: dict) -> None:
    """Refuses a dataset whose files differ from what was prepared. Every open checks (the
    default corpus's 17 MB take ~0.02 s; large datasets ~1 s per GB, once per run); a manifest
    made before checksums were recorded has none to check."""
    for name, expected in checksums.items():
        path = directory / name
        try:
            changed = file_checksum(path) != expected
        except FileNotFoundError:
            raise DatasetError(f"{path} is missing from the prepared dataset; "
                               f"{_REPREPARE.format(directory)}") from None
        if changed:
            raise DatasetError(f"{path} has changed since the dataset was prepared (its sha256 is not "
                               f"the one in {MANIFEST}); {_REPREPARE.format(directory)}")


def is_prepared(spec: str) -> bool:
    return spec != "stdlib" and any((Path(spec).expanduser() / f).is_file() for f in (MANIFEST, PLAN))


def resolve(data_config, vocab_size: int, cache_dir: Path, log=print,
            special_tokens: tuple[str, ...] = ()) -> list[tuple[Dataset, float]]:
    """The (dataset, weight) pairs `data_config` names, preparing raw text if needed (a trained
    tokenizer gets the objective's `special_tokens` too). All must share one tokenizer, and the
    model's vocabulary must hold it."""
    specs = parse_mixture(data_config.mixture) or [(data_config.source, 1.0)]
    datasets = [(_open_or_prepare(spec, data_config, vocab_size, cache_dir, log, tuple(special_tokens)), w)
                for spec, w in specs]
    names = [dataset.name for dataset, _ in datasets]
    for (dataset, _), (spec, _) in zip(datasets, specs):
        if names.count(dataset.name) > 1:  # x/web and y/web: each keeps its own validation metrics.
            dataset.name = spec
    first = datasets[0][0]
    for dataset, _ in datasets[1:]:
        if dataset.fingerprint != first.fingerprint:
            raise DatasetError(f"the datasets of data.mixture use different tokenizers ({first.name}: "
                               f"{first.fingerprint}, {dataset.name}: {dataset.fingerprint}); prepare "
                               f"them with one tokenizer (llmjax-prepare --tokenizer FILE).")
    _check_vocab(first.vocab_size, first.fingerprint, vocab_size)
    for dataset, _ in datasets:
        log(f"data: {dataset.name}: {dataset.tokens['train']:,} train / "
            f"{dataset.tokens['val']:,} val tokens, tokenizer "
            f"{dataset.fingerprint} ({dataset.vocab_size} tokens) in {dataset.directory}"
            + ("" if CHECKSUMS in dataset.manifest else " (unverified: prepared before llmjax recorded checksums)"))
    return datasets


def given_tokenizer(data_config, vocab_size: int, *workdirs) -> TextTokenizer | None:
    """The tokenizer a run has without preparing a corpus: `data.tokenizer`, else the one saved
    in the first of `workdirs` that has one; None when there is none. A fine-tuning run reads
    its task, so this is all the data it needs: preparing the corpus would train a tokenizer
    without the special tokens its pretrained model's objective added, or tokenize gigabytes
    with an imported model's, for nothing."""
    if data_config.tokenizer:
        tokenizer = TextTokenizer(Path(data_config.tokenizer).expanduser(), data_config.eos_id)
    else:
        tokenizer = next(filter(None, (load_from_dir(Path(w)) for w in workdirs if w)), None)
    if tokenizer is not None:
        _check_vocab(tokenizer.vocab_size, tokenizer.fingerprint, vocab_size)
    return tokenizer


def _check_vocab(tokenizer_vocab: int, fingerprint: str, model_vocab: int) -> None:
    if tokenizer_vocab > model_vocab:
        raise DatasetError(f"model.vocab_size={model_vocab} is smaller than the data's tokenizer "
                           f"({tokenizer_vocab} tokens, fingerprint {fingerprint}); set "
                           f"--config.model.vocab_size={tokenizer_vocab} or use a smaller tokenizer.")


def _open_or_prepare(spec: str, data_config, vocab_size: int, cache_dir: Path, log,
                     special_tokens: tuple[str, ...]) -> Dataset:
    if is_prepared(spec):
        return open_dataset(spec)
    root = sources.stdlib_root() if spec == "stdlib" else Path(spec).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data source {spec!r} is not a directory; give 'stdlib', a directory of "
                           f"text files or a dataset prepared by llmjax-prepare.")
    given_tokenizer(data_config, vocab_size)  # A given one (e.g. an imported model's) is checked before any work.
    options = PrepareOptions(inputs=(str(root),), pattern=data_config.glob, vocab_size=vocab_size,
                             tokenizer=data_config.tokenizer, eos_id=data_config.eos_id,
                             val_percent=data_config.val_percent, max_files=data_config.max_files,
                             special_tokens=special_tokens)
    try:
        check_vocab_size(options)
        out = cache_dir / f"dataset-{dataset_key(options)}"
    except (sources.SourceError, PrepareError) as error:
        raise DatasetError(str(error)) from None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = open(f"{out}.lock", "w")
    except OSError as error:
        raise DatasetError(f"cannot write prepared data to {out.parent} ({error.strerror}); set "
                           f"data.cache_dir (or $LLMJAX_CACHE) to a directory you can write to.") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / MANIFEST).is_file():
            prepare(options, out, log, progress=False)
    return open_dataset(out, name="stdlib" if spec == "stdlib" else root.name)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLMJAX_CACHE", Path.home() / ".cache" / "llmjax"))


def cache_dir(config) -> Path:
    """Where a run's prepared data, measured peak and compiled steps are kept:
    `data.cache_dir`, else $LLMJAX_CACHE, else ~/.cache/llmjax."""
    return Path(config.data.cache_dir).expanduser() if config.data.cache_dir else default_cache_dir()


def check_tokenizer(workdir: Path, tokenizer: TextTokenizer) -> None:
    """Refuses data tokenized differently from what the run in `workdir` was trained on: its
    token ids would mean other strings to the model, or its documents would end elsewhere. A
    workdir without a tokenizer passes."""
    saved = load_from_dir(workdir)
    if saved is not None and saved.fingerprint != tokenizer.fingerprint:
        raise DatasetError(f"the data's tokenizer ({tokenizer.fingerprint}: {tokenizer.vocab_size} "
                           f"tokens, end of document {tokenizer.eos_id}) is not the one the run in "
                           f"{workdir} was trained with ({saved.fingerprint}: {saved.vocab_size} "
                           f"tokens, end of document {saved.eos_id}); use data tokenized with it: "
                           f"--config.data.tokenizer={saved.path} --config.data.eos_id={saved.eos_id} "
                           f"(llmjax-train prepares text with it), or for a prepared dataset llmjax-prepare "
                           f"--tokenizer {saved.path} --eos_id {saved.eos_id} ...")
