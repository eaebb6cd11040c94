"""Reads documents out of raw inputs: plain text, JSONL and Parquet, optionally gzip/zstd.

A plain-text file is one document; a JSONL line or a Parquet row is one document. Each
document carries a stable id (the file's path relative to its input root, plus the line or
row number), which decides the train/validation split by hash: adding files never moves a
document from one side to the other. (A corpus that is a single text file is cut into a head
and a held-out tail instead, each named by its first line: see `tail_parts`.)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob as globlib
import gzip
import hashlib
import io
import itertools
import json
import sysconfig
import zlib
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
    seen: set[Path] = set()
    for spec in inputs:
        path = Path(spec).expanduser()
        if path.is_dir():
            if not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
                raise SourceError(f"file pattern {pattern!r} cannot be used (it must stay inside the input "
                                  f"directory); give a relative glob such as '**/*.txt' (--pattern; data.glob "
                                  f"for llmjax-train).")
            # glob.glob, as for a pattern input, follows symlinked directories (Path.glob does not
            # before Python 3.13): a directory of links to the data is read, not silently skipped.
            # Shallowest first: a file also reached around a symlink loop keeps its shortest path.
            matches = sorted(globlib.glob(pattern, root_dir=path, recursive=True, include_hidden=True),
                             key=lambda m: (len(Path(m).parts), m))
            files = [(path / m, Path(m)) for m in matches if (path / m).is_file()]
        elif path.is_file():
            files = [(path, Path(path.name))]
        else:
            matches = sorted(globlib.glob(str(path), recursive=True), key=lambda m: (len(Path(m).parts), m))
            files = [(Path(m), Path(m).relative_to(_glob_base(spec))) for m in matches
                     if Path(m).is_file()]
            if not files:
                raise SourceError(f"input {spec!r} is neither a file, a directory nor a glob "
                                  f"pattern matching a file; check the path.")
        for p, rel in files:
            real = p.resolve()
            if "site-packages" in rel.parts or "__pycache__" in rel.parts or real in seen:
                continue  # A file two inputs name (a directory and a glob inside it) is read once.
            seen.add(real)
            # Its id does not depend on the other inputs, so adding one moves nothing across the
            # split; only a second file of the same relative path is told apart by its input.
            key = str(rel) if str(rel) not in found else f"{spec}:{rel}"
            found[key] = InputFile(p, key, p.stat().st_size)
    if not found:
        raise SourceError(f"no input files found in {inputs} (pattern {pattern!r}); give files, "
                          f"directories or glob patterns of .txt/.jsonl/.parquet (optionally .gz/.zst), "
                          f"or a pattern that matches them (llmjax-prepare --pattern, data.glob for "
                          f"llmjax-train, llmjax-eval --glob).")
    return [found[k] for k in sorted(found)]


def _glob_base(pattern: str) -> Path:
    """The directory part of a glob pattern before its first wildcard."""
    parts = Path(pattern).expanduser().parts
    base = list(itertools.takewhile(lambda part: not globlib.has_magic(part), parts))
    return Path(*base) if base else Path(".")


def glob_matches(pattern: str, path: Path) -> bool:
    """Whether the input glob `pattern` would match the file `path` (existing or not), as
    `find_inputs` globs: `**` spans any directories but hidden ones, and no wildcard matches a
    name's leading dot. Lets llmjax-prepare refuse an --out whose files a rerun would read."""
    base = _glob_base(pattern)
    try:
        parts = Path(path).resolve().relative_to(base.resolve()).parts
    except ValueError:
        return False
    return _match_parts(Path(pattern).expanduser().parts[len(base.parts):], parts)


def _match_parts(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_parts(pattern[1:], parts[i:]) for i in range(len(parts) + 1)
                   if not any(part.startswith(".") for part in parts[:i]))
    return (bool(parts) and (pattern[0].startswith(".") or not parts[0].startswith("."))
            and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match_parts(pattern[1:], parts[1:]))


def id_bytes(doc_id: str) -> bytes:
    """The bytes a document id (or file name) is hashed as: a path's own bytes, as os.fsencode
    gives them on a UTF-8 file system, so that a name that is not UTF-8 (decoded by Python with
    surrogate escapes) is hashed too; a UTF-8 name gives the bytes it always did, and stays on its
    side of the split."""
    return doc_id.encode("utf-8", "surrogateescape")


def bucket(doc_id: str) -> int:
    """Which of 10,000 buckets a document falls in: those below val_percent * 100 are held out."""
    return int(hashlib.sha1(id_bytes(doc_id)).hexdigest(), 16) % 10_000


def is_validation(doc_id: str, val_percent: float) -> bool:
    return bucket(doc_id) < val_percent * 100


def _open_binary(file: InputFile):
    if file.compression == "gz":
        return gzip.open(file.path, "rb")
    if file.compression == "zst":
        return _ZstdReader(file.path)
    return open(file.path, "rb")


class _ZstdReader(io.RawIOBase):
    """A .zst file's decompressed bytes, frame after frame. A file that ends inside a frame
    (truncated) raises EOFError, as gzip does; zstandard's own stream_reader ends quietly
    there, handing on a prefix of the text as if it were all of it. Bytes that are not zstd
    data raise OSError, as they do from gzip."""

    def __init__(self, path: Path):
        import zstandard  # noqa: PLC0415 - only needed for .zst inputs.

        self._file, self._zstd = open(path, "rb"), zstandard.ZstdDecompressor()
        self._zstd_error = zstandard.ZstdError
        self._frame, self._fed = self._zstd.decompressobj(), False
        self._out, self._at = b"", 0  # Decompressed bytes not yet read, and where reading is.

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at == len(self._out):
            chunk = self._file.read(1 << 20)
            if not chunk:
                if self._fed and not self._frame.eof:
                    raise EOFError("compressed file ended before the end of its last frame")
                return 0
            self._out, self._at = b"", 0
            while chunk:
                if self._frame.eof:  # The next frame of a multi-frame file.
                    self._frame, self._fed = self._zstd.decompressobj(), False
                try:
                    self._out += self._frame.decompress(chunk)
                except self._zstd_error as error:
                    raise OSError(f"not zstd data: {error}") from None
                self._fed = True
                chunk = self._frame.unused_data if self._frame.eof else b""
        n = min(len(buffer), len(self._out) - self._at)
        buffer[:n] = self._out[self._at:self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


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


def line_parts(file: InputFile, target: int) -> list[tuple[int, int, int]]:
    """(start byte, end byte, number of its first line) of consecutive parts of an uncompressed
    JSONL file, each of whole lines and about `target` bytes: the parts of one large file are
    tokenized by several workers at once, and its documents keep the ids (path:line) they have
    when the file is read whole. One pass over the file, counting its lines."""
    parts, start, line = [], 0, 1
    with open(file.path, "rb") as handle:
        while start < file.size:
            end = file.size
            if start + target < file.size:  # Cut after the line holding the target's last byte.
                handle.seek(start + target - 1)
                handle.readline()
                end = handle.tell()
            parts.append((start, end, line))
            start, line = end, line + _newlines(handle, start, end)
    return parts


def tail_parts(file: InputFile, val_percent: float) -> list[tuple[int, int, int]]:
    """(start byte, end byte, number of its first line) of an uncompressed text file's head and
    its tail: the last `val_percent` of its bytes, from the start of the line they begin in (a
    byte at least, so that a file ending in a newline still has one). One text document hashes
    wholly to one side, so a corpus that is one text file (tiny-shakespeare's input.txt) holds out
    its tail instead, as the char-level setups do. The whole file, as one part, when its first
    line reaches into the tail: there is no line boundary to cut at."""
    at = min(int(file.size * (1 - val_percent / 100)), file.size - 1)
    with open(file.path, "rb") as handle:
        cut = at
        while cut > 0:  # Back to the newline before byte `at`, a block at a time.
            step = min(cut, 1 << 20)
            handle.seek(cut - step)
            newline = handle.read(step).rfind(b"\n")
            cut -= step
            if newline >= 0:
                cut += newline + 1
                break
        if cut <= 0:
            return [(0, file.size, 1)]
        return [(0, cut, 1), (cut, file.size, 1 + _newlines(handle, 0, cut))]


def _newlines(handle, start: int, end: int) -> int:
    """How many newlines bytes [start, end) of an open file hold, read a block at a time."""
    handle.seek(start)
    newlines, left = 0, end - start
    while left and (block := handle.read(min(left, 1 << 24))):
        newlines, left = newlines + block.count(b"\n"), left - len(block)
    return newlines


def read_documents(file: InputFile, text_field: str, stats: ReadStats,
                   part: tuple[int, int, int] | None = None) -> Iterator[tuple[str, str]]:
    """(document id, text) for each non-empty document of `file`, or of one `part` of it (see
    `line_parts` and `tail_parts`). Invalid UTF-8 is replaced (U+FFFD) and counted; empty documents are counted
    and skipped. A file that cannot be read (damaged, truncated, not in its suffix's format)
    raises SourceError naming it."""
    try:
        for doc_id, text in _documents(file, text_field, stats, part):
            if text.strip():
                yield doc_id, text
    except (OSError, EOFError, zlib.error) as error:
        raise _unreadable(file, error) from None


def _unreadable(file: InputFile, error: Exception) -> SourceError:
    if isinstance(error, OSError) and error.errno is not None:  # Permissions, a file gone since.
        return SourceError(f"{file.path}: cannot be read ({error.strerror}); make it readable or "
                           f"remove it from the inputs.")
    form = {"parquet": "Parquet", "jsonl": "JSON lines", "text": "text"}[file.kind]
    return SourceError(f"{file.path}: cannot be read as {form}"
                       f"{f' ({file.compression}-compressed)' if file.compression else ''}: "
                       f"{' '.join(str(error).split())}; the file is damaged or truncated: replace it "
                       f"with an intact copy or remove it from the inputs.")


_TEXT_FIELD_FIX = ("name the JSONL field or Parquet column that holds the text with llmjax-prepare "
                   "--text_field (raw data given to llmjax-train must call it 'text').")


def _lines_until(handle, end: int):
    position = handle.tell()
    while position < end and (line := handle.readline()):
        position += len(line)
        yield line


def _documents(file: InputFile, text_field: str, stats: ReadStats, part: tuple[int, int, int] | None):
    if file.kind == "parquet":
        yield from _parquet_documents(file, text_field, stats)
        return
    with _open_binary(file) as handle:
        if file.kind == "text":
            if part is None:
                yield file.relpath, _decode(handle.read(), stats)
            else:  # A single document's head or tail (see `tail_parts`).
                handle.seek(part[0])
                yield f"{file.relpath}:{part[2]}", _decode(handle.read(part[1] - part[0]), stats)
            return
        lines, first = (io.BufferedReader(handle) if file.compression else handle), 1
        if part is not None:
            start, end, first = part
            handle.seek(start)
            lines = _lines_until(handle, end)
        for number, line in enumerate(lines, first):
            if number == 1:  # Editors on Windows start UTF-8 files with a BOM; json refuses it.
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            try:
                line, replaced = line.decode("utf-8"), False
            except UnicodeDecodeError:  # Replaced and counted, as in text files.
                line, replaced = line.decode("utf-8", errors="replace"), True
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as error:
                reason = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
                raise SourceError(f"{file.path}:{number}: not valid JSON ({reason}); each line "
                                  f"of a JSONL file must be one JSON object.") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise SourceError(f"{file.path}:{number}: no text field {text_field!r} (has "
                                  f"{keys}); {_TEXT_FIELD_FIX}")
            value = record[text_field]
            if not isinstance(value, str):
                raise SourceError(f"{file.path}:{number}: field {text_field!r} is "
                                  f"{type(value).__name__}, not a string; {_TEXT_FIELD_FIX}")
            text = _decode(value.encode("utf-8", "surrogatepass"), stats)
            stats.invalid_utf8_documents += replaced
            yield f"{file.relpath}:{number}", text


def _parquet_documents(file: InputFile, text_field: str, stats: ReadStats):
    import pyarrow as pa  # noqa: PLC0415 - heavy; only needed for Parquet inputs.
    import pyarrow.parquet as pq  # noqa: PLC0415

    with _open_binary(file) as handle:
        try:
            parquet = pq.ParquetFile(handle if not file.compression else io.BytesIO(handle.read()))
            if text_field not in parquet.schema_arrow.names:
                raise SourceError(f"{file.path}: no column {text_field!r} (has "
                                  f"{parquet.schema_arrow.names}); {_TEXT_FIELD_FIX}")
            kind = parquet.schema_arrow.field(text_field).type
            if not _is_text(pa, kind.value_type if pa.types.is_dictionary(kind) else kind):
                raise SourceError(f"{file.path}: column {text_field!r} is {kind}, not a string; {_TEXT_FIELD_FIX}")
            row = 0
            for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
                for value in batch.column(0).to_pylist():
                    row += 1
                    if value is None:
                        stats.documents += 1
                        stats.empty_documents += 1
                        continue
                    yield f"{file.relpath}:{row}", _decode(value.encode("utf-8", "surrogatepass"), stats)
        except pa.ArrowException as error:
            raise _unreadable(file, error) from None


def _is_text(pa, kind) -> bool:
    """Whether a Parquet column of this Arrow type reads as Python strings (or only nulls, which
    are empty documents). String views exist from pyarrow 16 on."""
    views = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or views(kind) or pa.types.is_null(kind)
