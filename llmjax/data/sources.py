"""Reads documents out of raw inputs: plain text, JSONL and Parquet, optionally gzip/zstd.

A plain-text file is one document; a JSONL line or a Parquet row is one document. Each
document carries a stable id (the file's path relative to its input root, plus the line or
row number), which decides the train/validation split by hash: adding files never moves a
document from one side to the other.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import gzip
import hashlib
import io
import itertools
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from llmjax.data.errors import DataError


class SourceError(DataError):
    """An input cannot be read as asked; the message names the file (and line) and the fix."""


TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text")
STRUCTURED = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSED = (".gz", ".zst")


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: Path
    relpath: str  # Relative to the input it was found under: names documents stably.
    size: int

    @property
    def kind(self) -> str:
        name = self.path.name
        for suffix in COMPRESSED:
            name = name.removesuffix(suffix)
        return STRUCTURED.get(Path(name).suffix, "text")

    @property
    def compression(self) -> str:
        return next((s[1:] for s in COMPRESSED if self.path.name.endswith(s)), "")


@dataclasses.dataclass
class ReadStats:
    """What was odd about the input, summarised after preparation instead of failing it."""

    documents: int = 0
    empty_documents: int = 0
    invalid_utf8_documents: int = 0
    bytes: int = 0

    def add(self, other: ReadStats) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def find_inputs(inputs: list[str], pattern: str = "**/*") -> list[InputFile]:
    """Files named by `inputs` (files, directories searched with `pattern`, or glob patterns),
    sorted by relative path. site-packages is skipped so that "the standard library" does not
    depend on what happens to be installed."""
    found: dict[str, InputFile] = {}
    for spec in inputs:
        path = Path(spec).expanduser()
        if path.is_dir():
            files = [(p, p.relative_to(path)) for p in path.glob(pattern) if p.is_file()]
        elif path.is_file():
            files = [(path, Path(path.name))]
        else:
            matches = sorted(globlib.glob(str(path), recursive=True))
            files = [(Path(m), Path(m).relative_to(_glob_base(spec))) for m in matches
                     if Path(m).is_file()]
            if not files:
                raise SourceError(f"input {spec!r} is neither a file, a directory nor a glob "
                                  f"pattern matching a file; check the path.")
        for p, rel in files:
            if "site-packages" in rel.parts or "__pycache__" in rel.parts:
                continue
            key = str(rel) if len(inputs) == 1 else f"{spec}:{rel}"
            found[key] = InputFile(p, key, p.stat().st_size)
    if not found:
        raise SourceError(f"no input files found in {inputs} (pattern {pattern!r}); give files, "
                          f"directories or glob patterns of .txt/.jsonl/.parquet (optionally .gz/.zst).")
    return [found[k] for k in sorted(found)]


def _glob_base(pattern: str) -> Path:
    """The directory part of a glob pattern before its first wildcard."""
    parts = Path(pattern).expanduser().parts
    base = list(itertools.takewhile(lambda part: not globlib.has_magic(part), parts))
    return Path(*base) if base else Path(".")


def is_validation(doc_id: str, val_percent: float) -> bool:
    bucket = int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % 10_000
    return bucket < val_percent * 100


def _open_binary(file: InputFile):
    if file.compression == "gz":
        return gzip.open(file.path, "rb")
    if file.compression == "zst":
        import zstandard  # noqa: PLC0415 - only needed for .zst inputs.
        return zstandard.ZstdDecompressor().stream_reader(open(file.path, "rb"), closefd=True)
    return open(file.path, "rb")


def _decode(raw: bytes, stats: ReadStats) -> str:
    stats.documents += 1
    stats.bytes += len(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8_documents += 1
        text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        stats.empty_documents += 1
    return text


def read_documents(file: InputFile, text_field: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    """(document id, text) for each non-empty document of `file`. Invalid UTF-8 is replaced
    (U+FFFD) and counted; empty documents are counted and skipped."""
    for doc_id, text in _documents(file, text_field, stats):
        if text.strip():
            yield doc_id, text


def _documents(file: InputFile, text_field: str, stats: ReadStats):
    if file.kind == "parquet":
        yield from _parquet_documents(file, text_field, stats)
        return
    with _open_binary(file) as handle:
        if file.kind == "text":
            yield file.relpath, _decode(handle.read(), stats)
            return
        for number, line in enumerate(io.BufferedReader(handle) if file.compression else handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise SourceError(f"{file.path}:{number}: not valid JSON ({error.msg}); each line "
                                  f"of a JSONL file must be one JSON object.") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise SourceError(f"{file.path}:{number}: no text field {text_field!r} (has "
                                  f"{keys}); set --text_field to the field that holds the text.")
            value = record[text_field]
            if not isinstance(value, str):
                raise SourceError(f"{file.path}:{number}: field {text_field!r} is "
                                  f"{type(value).__name__}, not a string.")
            yield f"{file.relpath}:{number}", _decode(value.encode("utf-8", "surrogatepass"), stats)


def _parquet_documents(file: InputFile, text_field: str, stats: ReadStats):
    import pyarrow.parquet as pq  # noqa: PLC0415 - heavy; only needed for Parquet inputs.
    with _open_binary(file) as handle:
        parquet = pq.ParquetFile(handle if not file.compression else io.BytesIO(handle.read()))
        if text_field not in parquet.schema_arrow.names:
            raise SourceError(f"{file.path}: no column {text_field!r} (has "
                              f"{parquet.schema_arrow.names}); set --text_field to the text column.")
        row = 0
        for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                if value is None:
                    stats.documents += 1
                    stats.empty_documents += 1
                    continue
                yield f"{file.relpath}:{row}", _decode(value.encode("utf-8", "surrogatepass"), stats)
