"""Finds the documents of a text corpus and splits them into train and validation by file.

The default corpus is the running interpreter's own standard-library source: every Python
install has it, it needs no download, and it is real code of a few tens of megabytes.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path


class CorpusError(ValueError):
    """The corpus cannot be read or is too small; the message says what to change."""


def corpus_root(source: str) -> Path:
    if source == "stdlib":
        return Path(sysconfig.get_paths()["stdlib"])
    root = Path(source).expanduser()
    if not root.is_dir():
        raise CorpusError(f"config.data.source={source!r}: not a directory; give a directory of "
                          f"text files or 'stdlib'.")
    return root


def list_documents(root: Path, glob: str, max_files: int) -> list[str]:
    """Sorted relative paths; site-packages is excluded so the corpus does not depend on what
    happens to be installed."""
    paths = sorted(str(p.relative_to(root)) for p in root.glob(glob)
                   if p.is_file() and "site-packages" not in p.relative_to(root).parts)
    if max_files:
        paths = paths[:max_files]
    if len(paths) < 2:
        raise CorpusError(f"{root} has {len(paths)} files matching config.data.glob={glob!r}; "
                          f"at least 2 are needed (one for training, one for validation).")
    return paths


def _path_bucket(relpath: str) -> int:
    return int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % 10_000


def split_documents(relpaths: list[str], val_percent: float) -> tuple[list[str], list[str]]:
    """A file is held out when the hash of its path falls below val_percent, so the split does
    not move when files are added. At least one file lands on each side."""
    buckets = {p: _path_bucket(p) for p in relpaths}
    val = [p for p in relpaths if buckets[p] < val_percent * 100]
    if not val:
        val = [min(relpaths, key=buckets.get)]
    if len(val) == len(relpaths):
        val = val[:-1]
    held = set(val)
    return [p for p in relpaths if p not in held], val


def read_document(path: Path) -> tuple[str, bool]:
    """The text of a file and whether it held invalid UTF-8 (replaced, never fatal)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True
