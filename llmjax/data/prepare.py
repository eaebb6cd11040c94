"""Turns a corpus directory into a cached tokenizer and two flat token streams (train, val).

Documents are concatenated with EOS after each, once, at preparation time; training then reads
fixed windows of the stream by index (see `pipeline.py`). The cache is keyed by the corpus
content and the tokenizer settings, and is written to a temporary directory that is renamed
into place only when complete, so an interrupted preparation never leaves a usable-looking
half cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from llmjax.data import corpus
from llmjax.data.corpus import CorpusError
from llmjax.data.tokenizer import EOS, special_id, train_tokenizer

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PreparedCorpus:
    directory: Path
    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    manifest: dict

    @property
    def eos_id(self) -> int:
        return self.manifest["eos_id"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLMJAX_CACHE", Path.home() / ".cache" / "llmjax"))


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats of the token frequency distribution: the loss of the best model that
    ignores context, i.e. the bar a trained model must beat to have learnt anything."""
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def given_tokenizer(data_config, vocab_size: int) -> tuple[Tokenizer, int] | None:
    """(tokenizer, EOS id) named by `data.tokenizer` (e.g. an imported model's), checked; None
    when llmjax trains its own."""
    if not data_config.tokenizer:
        return None
    path = Path(data_config.tokenizer).expanduser()
    if not path.is_file():
        raise CorpusError(f"config.data.tokenizer={data_config.tokenizer!r}: no such file; give a "
                          f"tokenizer.json (e.g. RUN/tokenizer.json of an imported run) or '' to "
                          f"train one on the corpus.")
    tokenizer = Tokenizer.from_file(str(path))
    if tokenizer.get_vocab_size() > vocab_size:
        raise CorpusError(f"config.data.tokenizer={data_config.tokenizer!r}: has "
                          f"{tokenizer.get_vocab_size()} tokens, more than model.vocab_size="
                          f"{vocab_size}; use the model's own tokenizer.")
    eos_id = data_config.eos_id if data_config.eos_id >= 0 else tokenizer.token_to_id(EOS)
    if eos_id is None or eos_id >= tokenizer.get_vocab_size():
        raise CorpusError(f"config.data.eos_id={data_config.eos_id}: the tokenizer has no such "
                          f"token (nor {EOS}); set it to the id that ends a document.")
    return tokenizer, eos_id


def _fingerprint(root: Path, relpaths: list[str], data_config, vocab_size: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, vocab_size, data_config.val_percent]).encode())
    if data_config.tokenizer:
        h.update(Path(data_config.tokenizer).expanduser().read_bytes() + str(data_config.eos_id).encode())
    for rel in relpaths:
        h.update(rel.encode() + b"\0" + hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()[:16]


def _token_stream(tokenizer: Tokenizer, texts: list[str], eos_id: int) -> np.ndarray:
    ids = [np.asarray(e.ids + [eos_id], np.uint32) for e in tokenizer.encode_batch(texts)]
    stream = np.concatenate(ids)
    return stream.astype(np.uint16) if tokenizer.get_vocab_size() <= 1 << 16 else stream


def prepare_corpus(data_config, vocab_size: int, log=print) -> PreparedCorpus:
    root = corpus.corpus_root(data_config.source)
    given = given_tokenizer(data_config, vocab_size)  # Fails before the corpus is read.
    relpaths = corpus.list_documents(root, data_config.glob, data_config.max_files)
    cache = Path(data_config.cache_dir).expanduser() if data_config.cache_dir else default_cache_dir()
    target = cache / f"corpus-{_fingerprint(root, relpaths, data_config, vocab_size)}"
    if not (target / "manifest.json").exists():
        _build(root, relpaths, data_config, vocab_size, given, target, log)
    manifest = json.loads((target / "manifest.json").read_text())
    log(f"corpus: {manifest['train_tokens']:,} train / {manifest['val_tokens']:,} val tokens "
        f"from {manifest['train_files']} + {manifest['val_files']} files of {root} "
        f"(cache {target})")
    return PreparedCorpus(directory=target,
                          tokenizer=Tokenizer.from_file(str(target / "tokenizer.json")),
                          train_tokens=np.load(target / "train.npy", mmap_mode="r"),
                          val_tokens=np.load(target / "val.npy", mmap_mode="r"),
                          manifest=manifest)


def _build(root, relpaths, data_config, vocab_size, given, target: Path, log) -> None:
    start = time.time()
    train_paths, val_paths = corpus.split_documents(relpaths, data_config.val_percent)
    texts, invalid = {}, []
    for rel in relpaths:
        texts[rel], bad = corpus.read_document(root / rel)
        if bad:
            invalid.append(rel)
    if invalid:
        log(f"corpus: {len(invalid)} files held invalid UTF-8 (replaced with U+FFFD), "
            f"e.g. {invalid[0]}")
    if given:
        tokenizer, eos_id = given
    else:
        log(f"corpus: training a {vocab_size}-token byte-level BPE on {len(train_paths)} files ...")
        tokenizer = train_tokenizer((texts[p] for p in train_paths), vocab_size)
        eos_id = special_id(tokenizer, EOS)
    train = _token_stream(tokenizer, [texts[p] for p in train_paths], eos_id)
    val = _token_stream(tokenizer, [texts[p] for p in val_paths], eos_id)
    manifest = {
        "format_version": FORMAT_VERSION, "root": str(root), "vocab_size": vocab_size,
        "tokenizer_vocab_size": tokenizer.get_vocab_size(), "eos_id": eos_id,
        "train_files": len(train_paths), "val_files": len(val_paths),
        "train_tokens": int(train.size), "val_tokens": int(val.size),
        "train_bytes": sum(len(texts[p].encode()) for p in train_paths),
        "val_bytes": sum(len(texts[p].encode()) for p in val_paths),
        "invalid_utf8_files": invalid, "val_paths": val_paths,
        "unigram_entropy_nats": unigram_entropy(train, tokenizer.get_vocab_size()),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        tokenizer.save(str(tmp / "tokenizer.json"))
        np.save(tmp / "train.npy", train)
        np.save(tmp / "val.npy", val)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        try:
            tmp.rename(target)
        except OSError:  # Another process finished the same cache first; theirs is identical.
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"corpus: prepared in {time.time() - start:.1f}s")
