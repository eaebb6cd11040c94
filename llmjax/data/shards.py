"""Token shards on disk and the one flat stream they read as.

A shard is a fixed-width binary file of token ids (uint16 when the vocabulary fits, else
uint32; documents joined with EOS after each) plus an index of where each document ends.
Shards are written under a temporary name and renamed when complete, so a reader never sees
a partial one. `TokenStream` concatenates a split's shards into one random-access stream
without copying: windows of it are what training reads. `file_checksum` is what a manifest
records of each file, so that a shard changed on disk after it was prepared is found before
anything trains on it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def temporary_path(path: Path) -> Path:
    """A name beside `path`, ending in .tmp, that no other writer uses: a file is written
    under it whole, then renamed to `path`. Two writers of one file at once (a killed
    preparation's orphaned worker and its rerun's) then never write into each other's."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")


class ShardWriter:
    """Appends documents to `path` (.bin) and their end offsets to `path`.idx.npy. Nothing is
    visible under the final names until `close()`; an interrupted writer leaves only .tmp files."""

    def __init__(self, path: Path, eos_id: int, dtype: np.dtype):
        self.path, self.eos_id, self.dtype = Path(path), eos_id, np.dtype(dtype)
        self._tmp = temporary_path(self.path)
        self._handle = open(self._tmp, "xb")
        self.ends: list[int] = []
        self.tokens = 0

    def append(self, ids: list[int]) -> None:
        document = np.empty(len(ids) + 1, self.dtype)
        document[:-1] = ids
        document[-1] = self.eos_id
        document.tofile(self._handle)
        self.tokens += document.size
        self.ends.append(self.tokens)

    def close(self) -> dict:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        index = index_path(self.path)
        index_tmp = temporary_path(index)
        with open(index_tmp, "xb") as handle:
            np.save(handle, np.asarray(self.ends, np.int64))
        index_tmp.rename(index)
        self._tmp.rename(self.path)
        return {"file": self.path.name, "tokens": self.tokens, "documents": len(self.ends)}


def index_path(path: Path) -> Path:
    return path.with_name(path.name + ".idx.npy")


def file_checksum(path: Path) -> str:
    """sha256 of the whole file (about 1 GB/s with the CPU's SHA instructions)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class TokenStream:
    """Read-only concatenation of shards, sliced like one array: `stream[a:b]`."""

    def __init__(self, paths: list[Path], dtype: np.dtype):
        self.parts = [np.memmap(p, dtype=dtype, mode="r") for p in paths if os.path.getsize(p)]
        self.offsets = np.cumsum([0] + [part.size for part in self.parts])
        self.size = int(self.offsets[-1])
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, _ = window.indices(self.size)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pieces = []
        while start < stop:
            part, base = self.parts[first], int(self.offsets[first])
            take = min(stop, base + part.size)
            pieces.append(part[start - base:take - base])
            start, first = take, first + 1
        return np.concatenate(pieces) if pieces else np.empty(0, self.dtype)

    def __array__(self, dtype=None, copy=None):
        whole = self[0:self.size]
        return whole if dtype is None else whole.astype(dtype)
