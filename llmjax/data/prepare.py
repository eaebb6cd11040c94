"""Raw text in, a prepared dataset out: a tokenizer, token shards per split, and a manifest.

The inputs are cut into units of whole files (or, for a large uncompressed JSONL file, of
parts of whole lines; a corpus that is one text file, into its head and its held-out tail);
each unit is tokenized by a worker process and written as one train and one validation shard,
then marked done. The manifest is written last, so a directory without
one is an unfinished preparation: rerunning the same command skips the finished units and does
the rest. The token stream of a split is its shards in unit
order, i.e. the documents in sorted-path order, however the inputs were cut into units. The
manifest records the sha256 of every file a reader opens (the tokenizer, each shard and its
index), which opening the dataset checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np

from llmjax.data.errors import DataError
from llmjax.data.jsonfile import read_json_object
from llmjax.data import sources, split_check
from llmjax.data.shards import ShardWriter, file_checksum, index_path, temporary_path, token_dtype
from llmjax.data.tokenizer import HF_FILE, IDS_FILE, SENTENCEPIECE_FILE, SPECIAL_TOKENS, TextTokenizer, train_tokenizer

FORMAT_VERSION = 2
MANIFEST, PLAN = "manifest.json", "plan.json"
# The manifest's {file: sha256} of the files a reader opens. Manifests made before it lack it
# and are read unchecked: the shard format did not change, so FORMAT_VERSION (part of the
# dataset's identity and cache key) stays, and no existing dataset must be prepared again.
CHECKSUMS = "sha256"
SPLITS = ("train", "val")


class PrepareError(DataError):
    """Preparation cannot start or go on; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    inputs: tuple[str, ...]
    pattern: str = "**/*"  # Files of an input directory to read (relative glob).
    text_field: str = "text"  # JSONL key / Parquet column holding the text.
    tokenizer: str = ""  # A tokenizer.json or SentencePiece .model; "" trains a byte-level BPE.
    eos_id: int = -1  # With `tokenizer`: the id that ends a document (-1: found by name).
    vocab_size: int = 8192  # Size of the trained tokenizer (ignored with `tokenizer`).
    tokenizer_sample_mb: float = 256.0  # Training text the tokenizer is trained on, at most.
    val_percent: float = 2.0  # Documents held out for validation, chosen by a hash of their id.
    max_files: int = 0  # Only the first N input files (0 = all): for quick runs.
    shard_mb: float = 64.0  # Input megabytes per unit (one train and one val shard each), at most.
    workers: int = 0  # Tokenizing processes (0 = one per CPU core).
    # Special tokens trained into the BPE beside llmjax's own (an objective's mask token or
    # sentinels); ignored with `tokenizer`, which must already have them.
    special_tokens: tuple[str, ...] = ()

    def identity(self, files: list[sources.InputFile]) -> dict:
        """What makes two preparations the same dataset (not how many workers made it)."""
        tokenizer = ({"fingerprint": TextTokenizer(Path(self.tokenizer), self.eos_id).fingerprint,
                      "eos_id": self.eos_id} if self.tokenizer
                     else {"train_vocab_size": self.vocab_size, "sample_mb": self.tokenizer_sample_mb})
        if self.special_tokens and not self.tokenizer:  # Absent when empty: older datasets keep their keys.
            tokenizer["special_tokens"] = list(self.special_tokens)
        identity = {"format_version": FORMAT_VERSION, "text_field": self.text_field,
                    "val_percent": self.val_percent, "tokenizer": tokenizer,
                    "files": [[f.relpath, f.size, f.path.stat().st_mtime_ns] for f in files]}
        if _single_document(files, self.val_percent):  # Absent otherwise, as above: split by position,
            identity["held_out"] = "tail"  # it is not the dataset cached before, which had no validation.
        return identity


def check_vocab_size(options: PrepareOptions) -> None:
    """A byte-level BPE holds every byte and the special tokens at least: a smaller size would
    come out larger than asked for, and larger than the model's vocabulary."""
    least = 256 + len(SPECIAL_TOKENS) + len(options.special_tokens)
    if not options.tokenizer and options.vocab_size < least:
        raise PrepareError(f"a byte-level BPE of {options.vocab_size} tokens cannot be trained: it holds "
                           f"256 bytes and {least - 256} special tokens; raise the vocabulary size to "
                           f"at least {least} (--vocab_size; model.vocab_size for llmjax-train).")


def input_files(options: PrepareOptions) -> list[sources.InputFile]:
    files = sources.find_inputs(list(options.inputs), options.pattern)
    return files[:options.max_files] if options.max_files else files


def dataset_key(options: PrepareOptions) -> str:
    """A short name for the dataset `options` describe: the cache directory of on-the-fly preparations."""
    text = json.dumps(options.identity(input_files(options)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _units(files: list[sources.InputFile], shard_bytes: float, workers: int, val_percent: float) -> list[list]:
    """Consecutive pieces grouped up to `shard_bytes`, and into enough units to keep every
    worker busy with a few each. A piece is a whole file (its index), or a part of an
    uncompressed JSONL file larger than a unit ([index, start byte, end byte, first line]), so
    that one large file is still tokenized by every worker, or the head or tail of a corpus that
    is one text document (see `_forced_validation`)."""
    target = min(shard_bytes, max(1, sum(f.size for f in files)) / (4 * workers))
    units, current, size, single = [], [], 0, _single_document(files, val_percent)
    for index, file in enumerate(files):
        if single:
            pieces = [[index, *part] for part in sources.tail_parts(file, val_percent)]
        elif file.kind == "jsonl" and not file.compression and file.size > target:
            pieces = [[index, *part] for part in sources.line_parts(file, max(1, int(target)))]
        else:
            pieces = [index]
        for piece in pieces:
            piece_size = piece[2] - piece[1] if isinstance(piece, list) else file.size
            if current and size + piece_size > target:
                units.append(current)
                current, size = [], 0
            current.append(piece)
            size += piece_size
    return units + [current] if current else units


def _piece(files: list[sources.InputFile], piece) -> tuple[sources.InputFile, tuple[int, int, int] | None, int]:
    """(file, part of it or None, bytes) of a unit's piece (see `_units`)."""
    if isinstance(piece, int):  # A whole file.
        return files[piece], None, files[piece].size
    index, start, end, first_line = piece
    return files[index], (start, end, first_line), end - start


def _single_document(files: list[sources.InputFile], val_percent: float) -> bool:
    """Whether the corpus is one uncompressed text file: one document, which no hash of its id
    can put on both sides of the split, but whose bytes can be cut."""
    return val_percent > 0 and len(files) == 1 and files[0].kind == "text" and not files[0].compression


def _forced_validation(files: list[sources.InputFile], units: list[list], val_percent: float) -> list[str]:
    """Ids of documents held out whatever their hash, so that a small corpus of plain text still
    has a validation split. A corpus that is one text document (tiny-shakespeare's input.txt) is
    cut by `_units` into a head and its tail, the last val_percent of its bytes from a line
    boundary on (`sources.tail_parts`), and the tail is held out, as the char-level setups do;
    those two parts are placed by position alone, never by hash (`_held_out`). With one document
    per file and none hashed into validation, the file that hashes lowest is held out. A corpus
    left without validation documents all the same (JSONL or Parquet rows, all hashed to train)
    is refused when prepared, naming the --val_percent that holds one out (`split_check`)."""
    if _single_document(files, val_percent):
        return [f"{files[0].relpath}:{units[-1][-1][3]}"]  # The tail: the last part of the last unit.
    texts = [f.relpath for f in files if f.kind == "text"]
    if len(texts) < 2 or len(texts) != len(files) or val_percent <= 0:
        return []
    if any(sources.is_validation(t, val_percent) for t in texts):
        return []
    return [min(texts, key=lambda t: hashlib.sha1(sources.id_bytes(t)).hexdigest())]


def _held_out(file: sources.InputFile, part, doc_id: str, forced_val, val_percent: float) -> bool:
    """Whether a document is validation: forced, or by the hash of its id, except a part of a
    text file (a single document's head or tail), which is placed by position alone."""
    return doc_id in forced_val or (not _by_position(file, part) and sources.is_validation(doc_id, val_percent))


def _by_position(file: sources.InputFile, part) -> bool:
    return part is not None and file.kind == "text"


def _read_pieces(pieces, text_field: str, stats: sources.ReadStats):
    """(file, part, document id, text) of each non-empty document of `pieces` (see `_piece`), in order."""
    for file, part, _ in pieces:
        for doc_id, text in sources.read_documents(file, text_field, stats, part):
            yield file, part, doc_id, text


def _plan_pieces(files: list[sources.InputFile], plan: dict) -> list:
    return [_piece(files, piece) for unit in plan["units"] for piece in unit]


def _check_splits(options: PrepareOptions, files: list[sources.InputFile], plan: dict, records: list[dict]) -> None:
    counts = {split: sum(r["shards"][split]["documents"] for r in records) for split in SPLITS}
    split_check.check(counts, options, files, lambda: [  # Read again only when a split is empty.
        sources.bucket(doc_id) for file, part, doc_id, _ in
        _read_pieces(_plan_pieces(files, plan), options.text_field, sources.ReadStats()) if not _by_position(file, part)])


def _unit_name(split: str, unit: int) -> str:
    return f"{split}-{unit:05d}.bin"


def _tokenize_unit(args) -> dict:
    """Worker: tokenizes one unit into its train and val shards, then writes its done-marker."""
    out, unit, pieces, options, forced_val, dtype = args
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # The processes are the parallelism.
    tokenizer = _open_tokenizer(out, options)
    writers = {split: ShardWriter(out / _unit_name(split, unit), tokenizer.eos_id, dtype)
               for split in SPLITS}
    stats, split_bytes = sources.ReadStats(), dict.fromkeys(SPLITS, 0)
    batch: dict[str, list[str]] = {split: [] for split in SPLITS}

    def flush(split):
        for ids in tokenizer.encode_batch(batch[split]):
            writers[split].append(ids)
        batch[split].clear()

    for file, part, doc_id, text in _read_pieces(pieces, options.text_field, stats):
        split = "val" if _held_out(file, part, doc_id, forced_val, options.val_percent) else "train"
        batch[split].append(text)
        split_bytes[split] += len(text.encode("utf-8"))
        if len(batch[split]) >= 256:
            flush(split)
    for split in SPLITS:
        flush(split)
    record = {"unit": unit, "files": [f.relpath for f, _, _ in pieces], "input_bytes": sum(n for *_, n in pieces),
              "stats": dataclasses.asdict(stats),
              "shards": {split: writers[split].close() | {"bytes": split_bytes[split]} for split in SPLITS}}
    _write_json(out / f"unit-{unit:05d}.json", record)
    return record


def _open_tokenizer(out: Path, options: PrepareOptions) -> TextTokenizer:
    return TextTokenizer(out / _tokenizer_file(out), options.eos_id if options.tokenizer else -1)


def _tokenizer_file(out: Path) -> str | None:
    return next((p.name for p in sorted(out.glob("tokenizer.*")) if not p.name.endswith(".tmp")), None)


def _write_json(path: Path, value) -> None:
    tmp = temporary_path(path)
    tmp.write_text(json.dumps(value, indent=1))
    tmp.rename(path)


def _check_out_path(out: Path, options: PrepareOptions) -> None:
    """Refuses an --out that is a file, or inside an input directory, or where an input glob
    would match its files: a rerun, which finishes an interrupted preparation, would read the
    dataset's own files as input."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out} is a file; give a new or empty directory.")
    shard = _unit_name("train", 0)  # One name of each kind of file a dataset directory holds.
    names = (PLAN, MANIFEST, HF_FILE, SENTENCEPIECE_FILE, IDS_FILE, "unit-00000.json", shard,
             index_path(Path(shard)).name, temporary_path(Path(PLAN)).name)
    for spec in options.inputs:
        given = Path(spec).expanduser()
        if given.is_dir() and out.resolve().is_relative_to(given.resolve()):
            raise PrepareError(f"--out {out} is inside the input directory {spec}, whose files would "
                               f"then include the dataset's own; choose an --out outside it.")
        matched = None if given.exists() else next((n for n in names if sources.glob_matches(spec, out / n)), None)
        if matched:
            raise PrepareError(f"--out {out} is inside what the input pattern {spec!r} matches (it would match "
                               f"{out / matched}), whose files would then include the dataset's own; choose an "
                               f"--out outside it, or a pattern that does not reach it.")


def _check_output(out: Path, identity: dict) -> dict | None:
    """The existing plan when `out` holds this same dataset (finished or not); None when empty."""
    if not out.exists() or not any(out.iterdir()):
        return None
    if not (out / PLAN).is_file():
        raise PrepareError(f"--out {out} is a non-empty directory that is not an llmjax dataset; "
                           f"choose an empty or new directory.")
    plan = read_json_object(out / PLAN, PrepareError, f"delete {out} and run the command again.",
                            keys=("identity", "units", "forced_val"))
    if plan["identity"] != identity:
        changed = [k for k in identity if not isinstance(plan["identity"], dict)
                   or plan["identity"].get(k) != identity[k]]
        raise PrepareError(f"--out {out} already holds a different dataset (differs in: "
                           f"{', '.join(changed)}); choose another --out or delete that directory.")
    return plan


def prepare(options: PrepareOptions, out: Path, log=print, progress: bool = True) -> Path:
    """Prepares (or finishes preparing) the dataset `options` describe in `out`. A preparation
    this call starts and bad input stops (a damaged file, no text, a split left empty) leaves
    `out` as it found it: after the input is fixed, the same command starts afresh instead of
    finding `out` holding another dataset."""
    out = Path(out)
    check_vocab_size(options)
    _check_out_path(out, options)
    files = input_files(options)
    identity = options.identity(files)
    plan = _check_output(out, identity)
    if plan is not None and (out / MANIFEST).is_file():
        log(f"prepare: {out} already holds this dataset; nothing to do.")
        return out
    workers = options.workers or os.cpu_count() or 1
    if plan is not None:
        return _prepare(options, out, files, plan, workers, log, progress)
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    units = _units(files, options.shard_mb * 2**20, workers, options.val_percent)
    plan = {"identity": identity, "units": units, "forced_val": _forced_validation(files, units, options.val_percent)}
    try:
        _write_json(out / PLAN, plan)
        return _prepare(options, out, files, plan, workers, log, progress)
    except Exception as error:
        # Bad input, or a bug it runs into (an unforeseen type of Parquet column), fails the
        # same way on every rerun: what this call wrote would only stop the corrected command
        # ("--out already holds a different dataset"), so it goes. A failure of the machine (a
        # full disk, an I/O error, memory) is not the input's: it keeps the finished units, as an
        # interruption does (Ctrl-C, SIGTERM, a kill: not an Exception, never caught here), so
        # that the same command resumes once the cause is gone. `out` was empty or absent.
        if not isinstance(error, (OSError, MemoryError)):
            for written in out.iterdir() if existed else [out]:
                if written.is_dir():
                    shutil.rmtree(written)
                else:
                    written.unlink()
        raise


def _prepare(options: PrepareOptions, out: Path, files, plan: dict, workers: int, log, progress: bool) -> Path:
    for leftover in out.glob("*.tmp"):  # An interrupted run's partial files; never read.
        leftover.unlink(missing_ok=True)  # Or renamed meanwhile by the run's orphaned worker.
    start = time.perf_counter()
    tokenizer = _tokenizer(options, files, plan, out, log)
    done = {int(p.stem.split("-")[1]): read_json_object(p, PrepareError, "delete it and rerun: its unit is prepared again.")
            for p in out.glob("unit-*.json")}
    todo = [u for u in range(len(plan["units"])) if u not in done]
    if done:
        log(f"prepare: resuming {out}: {len(done)} of {len(plan['units'])} units already done")
    dtype = token_dtype(tokenizer.vocab_size)
    jobs = [(out, u, [_piece(files, p) for p in plan["units"][u]], options, frozenset(plan["forced_val"]), dtype)
            for u in todo]
    meter = _Progress(sum(n for job in jobs for *_, n in job[2]), enabled=progress)
    try:
        for record in _run(jobs, workers):
            done[record["unit"]] = record
            meter.update(record)
    finally:  # Its line ended before anything else is printed, an error too.
        meter.close()
    records = [done[u] for u in range(len(plan["units"]))]
    _check_splits(options, files, plan, records)
    manifest = _manifest(out, options, tokenizer, records, dtype)
    _write_json(out / MANIFEST, manifest)
    seconds = time.perf_counter() - start
    stats = manifest["read_stats"]
    log(f"prepare: {manifest['splits']['train']['tokens']:,} train / {manifest['splits']['val']['tokens']:,} "
        f"val tokens from {stats['documents']:,} documents in {len(files):,} files -> {out} in "
        f"{seconds:.1f}s ({meter.bytes / 2**20 / max(seconds, 1e-9):.2f} MB/s, "
        f"{meter.tokens / max(seconds, 1e-9):,.0f} tokens/s over {len(todo)} units)")
    if stats["empty_documents"] or stats["invalid_utf8_documents"]:
        log(f"prepare: skipped {stats['empty_documents']} empty documents; replaced invalid UTF-8 "
            f"(U+FFFD) in {stats['invalid_utf8_documents']} documents")
    return out


def _run(jobs, workers: int):
    if workers == 1 or len(jobs) <= 1:
        yield from map(_tokenize_unit, jobs)
        return
    # spawn, not fork: the caller may be a training process with JAX's threads running.
    with _workers_ignore_interrupts():
        pool = multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_leave_interrupts)
    with pool:
        yield from pool.imap_unordered(_tokenize_unit, jobs)


def _leave_interrupts() -> None:
    """A worker leaves Ctrl-C (which reaches the whole process group) to the parent, which stops
    the pool: one message, not a traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _workers_ignore_interrupts():
    """Processes started in the block ignore Ctrl-C from their first instruction: an ignored
    signal stays ignored across exec. Their initializer comes only after spawn has imported this
    module (seconds, on a loaded machine), and a Ctrl-C before it printed a worker's traceback.
    The parent ignores one too for the block's milliseconds (it cannot be held for later: the
    pool's threads would take and drop it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def _tokenizer(options, files, plan, out: Path, log) -> TextTokenizer:
    if options.tokenizer:  # Copied again on a rerun: the interrupted one may have saved only part.
        TextTokenizer(Path(options.tokenizer), options.eos_id).save(out)
    elif not _tokenizer_file(out):  # Else trained by the interrupted run this one resumes.
        _train(options, files, plan, out, log)
    return _open_tokenizer(out, options)


def _train(options, files, plan, out: Path, log) -> None:
    budget = options.tokenizer_sample_mb * 2**20
    log(f"prepare: training a {options.vocab_size}-token byte-level BPE on up to "
        f"{options.tokenizer_sample_mb:g} MB of training text ...")

    def sample():  # The documents the workers put in train, in the same order.
        seen = 0
        for file, part, doc_id, text in _read_pieces(_plan_pieces(files, plan), options.text_field, sources.ReadStats()):
            if _held_out(file, part, doc_id, plan["forced_val"], options.val_percent):
                continue
            yield text
            seen += len(text)
            if seen >= budget:
                return

    train_tokenizer(sample(), options.vocab_size, out / HF_FILE, options.special_tokens)
    learnt = TextTokenizer(out / HF_FILE).vocab_size
    if learnt < options.vocab_size:
        log(f"prepare: note: the training text gave {learnt:,} tokens, fewer than the {options.vocab_size:,} asked "
            f"for (it has no more pairs to merge); a model's vocab_size of {learnt:,} or more fits it.")


def _manifest(out, options, tokenizer: TextTokenizer, records: list[dict], dtype) -> dict:
    stats = sources.ReadStats()
    for record in records:
        stats.add(sources.ReadStats(**record["stats"]))
    splits = {}
    for split in SPLITS:
        shards = [r["shards"][split] for r in records]
        splits[split] = {"shards": shards, "tokens": sum(s["tokens"] for s in shards),
                         "documents": sum(s["documents"] for s in shards),
                         "bytes": sum(s["bytes"] for s in shards)}
    counts = sum(token_counts(out / shard["file"], dtype, tokenizer.vocab_size) for shard in splits["train"]["shards"])
    return {"format_version": FORMAT_VERSION, "inputs": list(options.inputs),
            "tokenizer": {"file": tokenizer.path.name, "fingerprint": tokenizer.fingerprint,
                          "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                          "pad_id": tokenizer.pad_id},
            "token_dtype": np.dtype(dtype).name, "splits": splits,
            "read_stats": dataclasses.asdict(stats), "sources": list(dict.fromkeys(f for r in records for f in r["files"])),
            "unigram_entropy_nats": unigram_entropy(counts),
            CHECKSUMS: {name: file_checksum(out / name) for name in _read_files(tokenizer, splits)}}


def _read_files(tokenizer: TextTokenizer, splits: dict) -> list[str]:
    """The files a reader of the dataset opens: the tokenizer, and each shard with its index."""
    shards = [Path(s["file"]) for split in SPLITS for s in splits[split]["shards"]]
    return [tokenizer.path.name] + [name for shard in shards for name in (shard.name, index_path(shard).name)]


def token_counts(path: Path, dtype, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """How often each token id occurs in a shard, read `chunk` tokens at a time: one bincount
    of a whole memory-mapped shard held it resident and made an int64 copy of it (a 1 GB
    input's shards took the preparing process to 3 GB)."""
    counts = np.zeros(vocab_size, np.int64)
    with open(path, "rb") as handle:
        while (ids := np.fromfile(handle, dtype=dtype, count=chunk)).size:
            counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
    return counts


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the token frequencies: the loss of the best model that ignores
    context, i.e. the bar a trained model must beat to have learnt anything."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class _Progress:
    """A tqdm bar over input file bytes that also shows text MB/s and tokens/s."""

    def __init__(self, total_bytes: int, enabled: bool):
        from tqdm import tqdm  # noqa: PLC0415
        self.bytes = self.tokens = 0
        self.start = time.perf_counter()
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare",
                        disable=not enabled or total_bytes == 0)

    def update(self, record: dict) -> None:
        self.bytes += record["stats"]["bytes"]  # Text, after decompression.
        self.tokens += sum(s["tokens"] for s in record["shards"].values())
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.bytes / 2**20 / elapsed:.1f} MB/s text, "
                                 f"{self.tokens / elapsed:,.0f} tok/s")
        self.bar.update(record["input_bytes"])

    def close(self) -> None:
        self.bar.close()
