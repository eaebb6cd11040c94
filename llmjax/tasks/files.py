"""Examples read from local files: JSON lines (.jsonl, or .json holding JSON lines) and
Parquet, with columns renamed onto the canonical fields.

Every problem is refused at the first bad line with one DataError naming the file, the line
(Parquet: the row) and the fix, so a user never has to guess which of ten thousand examples
broke a run.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

from llmjax.data.errors import DataError
from llmjax.tasks.examples import FIELDS, Example, canonical_fields, missing_field

SUFFIXES = (".jsonl", ".json", ".parquet")


def absolute(spec: str) -> str:
    """Comma-separated paths or globs, each relative one made absolute: the run's config then
    names its task files from any working directory (llmjax-eval, a resume from elsewhere)."""
    parts = (Path(part.strip()).expanduser() for part in spec.split(",") if part.strip())
    return ",".join(str(part if part.is_absolute() else Path.cwd() / part) for part in parts)


def resolve(spec: str, key: str) -> list[Path]:
    """The files named by `spec` (comma-separated paths or glob patterns, the config key
    `key`), in the order given, each glob's matches sorted, repeats dropped."""
    paths: list[Path] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        pattern = str(Path(part).expanduser())
        if glob.has_magic(pattern):
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            if not matches:
                raise DataError(f"{key}={spec!r}: no files match {part!r} (relative to {Path.cwd()}); "
                                f"check the pattern.")
        elif Path(pattern).is_file():
            matches = [Path(pattern)]
        else:
            raise DataError(f"{key}={spec!r}: no such file {part!r} (relative to {Path.cwd()}); check the path.")
        for path in matches:
            if path.suffix not in SUFFIXES:
                raise DataError(f"{path}: not a .jsonl, .json (JSON lines) or .parquet file; convert it to "
                                f"JSON lines or remove it from {key}.")
            if path not in paths:
                paths.append(path)
    return paths


def read_examples(path: Path, kind: str, renames: dict[str, str]) -> list[Example]:
    """Every example in `path`, in file order."""
    try:
        if path.suffix == ".parquet":
            return _parquet(path, kind, renames)
        return _jsonl(path, kind, renames)
    except OSError as error:  # Permissions, or a file gone since it was listed.
        raise DataError(f"{path}: cannot be read ({error.strerror or error}); make it readable or "
                        f"remove it from the task files.") from None


def _jsonl(path: Path, kind: str, renames: dict[str, str]) -> list[Example]:
    examples = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as error:
                reason = (error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
                          if isinstance(error, UnicodeDecodeError) else "nested too deeply")
                raise DataError(f"{where}: not valid JSON ({reason}); each line of a JSON-lines file must be "
                                f"one JSON object (a .json file holding one array is not read: write one "
                                f"object per line).") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: a JSON {type(record).__name__}, not an object; each line must be "
                                f"one object holding the example's fields.")
            examples.append(Example(canonical_fields(record, kind, renames, where), where))
    return examples


def _parquet(path: Path, kind: str, renames: dict[str, str]) -> list[Example]:
    import pyarrow as pa  # noqa: PLC0415 - heavy; only needed for Parquet files.
    import pyarrow.parquet as pq  # noqa: PLC0415

    columns = {name: renames.get(name, name) for name in FIELDS[kind]}
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        for name, column in columns.items():
            if column not in names:
                raise missing_field(str(path), kind, name, column, names)
        rows = parquet.read(columns=list(dict.fromkeys(columns.values()))).to_pylist()
    except pa.ArrowException as error:
        raise DataError(f"{path}: cannot be read as Parquet ({' '.join(str(error).split())}); the file is "
                        f"damaged or not Parquet: replace it or remove it from the task files.") from None
    return [Example(canonical_fields(row, kind, renames, f"{path}:row {number}"), f"{path}:row {number}")
            for number, row in enumerate(rows, 1)]
