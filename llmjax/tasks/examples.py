"""What a fine-tuning example is, kind by kind, and the two hashes that make task data
reproducible: the train/validation split and the fingerprint.

Both hash the example's canonical fields, never its file or line, so identical examples land
on the same side, reordering or re-sharding the files moves nothing across the split, and the
fingerprint changes exactly when the data a run sees does.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json

from llmjax.data.errors import DataError

KINDS = ("classification", "generation", "chat")
FIELDS = {"classification": ("text", "label"), "generation": ("prompt", "response"), "chat": ("messages",)}


@dataclasses.dataclass(frozen=True)
class Example:
    fields: dict  # Canonical names only (FIELDS[kind]); chat messages hold only role and content.
    where: str  # "path:line" (JSONL, 1-based) or "path:row N" (Parquet, 1-based), for error messages.


@dataclasses.dataclass(frozen=True)
class TaskData:
    name: str  # The built-in task's name, or the stems of the task files joined by "+".
    kind: str
    train: list[Example]
    val: list[Example]
    labels: tuple[str, ...] | None  # Classification only; index = class id.
    fingerprint: str  # 16 hex characters over kind, labels and every example's fields.


def canonical_json(value) -> str:
    """One spelling per value (sorted keys, no spaces, UTF-8 kept), so equal data hashes equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def example_hash(fields: dict) -> int:
    """A number drawn from the example's content alone, so a split or a subset made from it is
    the same whatever order the files list the examples in."""
    return int(hashlib.sha256(canonical_json(fields).encode()).hexdigest()[:8], 16)


def in_validation(fields: dict, val_percent: float) -> bool:
    return example_hash(fields) % 10_000 < val_percent * 100


def subset(examples: list[Example], count: int) -> list[Example]:
    """`count` examples chosen by content hash, kept in their file order: a sample of the whole
    set, where the first `count` of files grouped by label or source would be a few groups."""
    chosen = set(sorted(range(len(examples)), key=lambda i: (example_hash(examples[i].fields), i))[:count])
    return [e for i, e in enumerate(examples) if i in chosen]


def fingerprint(kind: str, labels: tuple[str, ...] | None, train: list[Example], val: list[Example]) -> str:
    data = {"kind": kind, "labels": labels, "train": [e.fields for e in train], "val": [e.fields for e in val]}
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


def canonical_fields(record: dict, kind: str, renames: dict[str, str], where: str) -> dict:
    """The example's canonical fields taken from `record` (a JSON object or a Parquet row),
    checked for the kind: a field that is missing, empty or of the wrong shape is refused
    naming `where` and the fix."""
    fields = {}
    for name in FIELDS[kind]:
        column = renames.get(name, name)
        if column not in record:
            raise missing_field(where, kind, name, column, sorted(record))
        fields[name] = _checked(record[column], name, column, kind, where)
    return fields


def missing_field(where: str, kind: str, name: str, column: str, has: list[str]) -> DataError:
    renamed = "" if column == name else f" (the {name}, as fields names it)"
    return DataError(f"{where}: no field {column!r}{renamed} for a {kind} example (has {has}); if the "
                     f"{name} is in another column, set fields=\"{name}=column\".")


def _checked(value, name: str, column: str, kind: str, where: str):
    if name == "messages":
        return _messages(value, column, where)
    if name == "label" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # Integer class labels (0/1) are common; they name classes as strings do.
    if not isinstance(value, str):
        raise DataError(f"{where}: field {column!r} is a {_type(value)}, not a string; a {kind} example's "
                        f"{name} is a string: check kind={kind!r} and fields.")
    if not value.strip():
        raise DataError(f"{where}: field {column!r} is empty; give every example a {name} or remove the line.")
    return value


def _messages(value, column: str, where: str) -> list[dict]:
    shape = "give a non-empty list of {\"role\": str, \"content\": str} objects (or check kind='chat')."
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {column!r} is {'an empty list' if value == [] else 'a ' + _type(value)}; "
                        f"{shape}")
    messages = []
    for number, message in enumerate(value, 1):
        if not isinstance(message, dict) or not all(isinstance(message.get(k), str) for k in ("role", "content")):
            raise DataError(f"{where}: message {number} of {column!r} is not a {{role, content}} object of "
                            f"strings ({_short(message)}); {shape}")
        if not message["role"].strip() or not message["content"].strip():
            raise DataError(f"{where}: message {number} of {column!r} has an empty "
                            f"{'role' if not message['role'].strip() else 'content'}; fill it in or drop the message.")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _type(value) -> str:
    return {dict: "JSON object", list: "list", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value) -> str:
    text = canonical_json(value)
    return text if len(text) <= 60 else text[:57] + "..."


def majority_label(train: list[Example]) -> str:
    """The most common training label (ties: the first in sorted order): the majority-class
    baseline's constant answer."""
    counts = collections.Counter(e.fields["label"] for e in train)
    return min(counts, key=lambda label: (-counts[label], label))


def describe(task: TaskData) -> str:
    """One line with the sizes a reader needs to judge results: the counts and, for
    classification, how often always answering the majority label would be right."""
    line = f"task {task.name}: {len(task.train):,} train / {len(task.val):,} val examples"
    if task.labels is None:
        return f"{line} ({task.kind})"
    majority = majority_label(task.train)
    share = sum(e.fields["label"] == majority for e in task.train) / len(task.train)
    return f"{line}, {len(task.labels)} labels (majority {share:.1%})"
