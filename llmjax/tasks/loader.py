"""`load`: one config section in, validated train and validation examples out, from a
built-in task or from local files.

Everything is checked before `load` returns (the split, the label set, every example), so a
fine-tuning run fails in its first second, naming the file and line, rather than after
compiling. A built-in task is built once into JSON-lines files under the cache directory and
then read back through the same path as user files, so both kinds of task are checked alike
and a fresh build returns exactly what a cached one does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from llmjax.data.errors import DataError
from llmjax.data.sources import stdlib_root
from llmjax.tasks import labels as label_set
from llmjax.tasks import stdlib
from llmjax.tasks.examples import FIELDS, KINDS, Example, TaskData, describe, fingerprint, in_validation, subset
from llmjax.tasks.files import read_examples, resolve


def load(section, cache_dir: Path, log=print) -> TaskData:
    """The task `section` asks for (keys: task, task_files, val_files, kind, fields, labels,
    val_percent, max_examples; a ConfigDict or a dict). Raises DataError with one line naming
    the key or file (and line) and the fix."""
    task, task_files, val_files = section["task"], section["task_files"], section["val_files"]
    val_percent, max_examples = section["val_percent"], section["max_examples"]
    if bool(task) == bool(task_files):
        raise DataError(f"task={task!r}, task_files={task_files!r}: give one of them, a built-in task "
                        f"({', '.join(sorted(stdlib.BUILTIN))}) or files of examples{', not both' if task else ''}.")
    if not val_files and not 0 < val_percent < 100:
        raise DataError(f"val_percent={val_percent!r}: hold out between 0 and 100 percent of the examples "
                        f"(10 is usual), or give val_files.")
    if not isinstance(max_examples, int) or max_examples < 0:
        raise DataError(f"max_examples={max_examples!r}: give a count of training examples, 0 for all.")
    kind = _builtin_kind(section) if task else section["kind"]
    if kind not in KINDS:
        raise DataError(f"kind={kind!r}: say what the task files hold, one of {', '.join(KINDS)}.")
    if section["labels"] and kind != "classification":
        raise DataError(f"labels={section['labels']!r}: a label set is for classification tasks, not {kind}; "
                        f"set labels=\"\".")
    if task:
        name = task
        directory = _materialise(task, val_percent, Path(cache_dir), log)
        train, val = read_examples(directory / "train.jsonl", kind, {}), read_examples(directory / "val.jsonl", kind, {})
        source, val_source = f"task={task!r}", f"task={task!r}"
    else:
        renames = _renames(section["fields"], kind)
        paths = resolve(task_files, "task_files")
        name = "+".join(dict.fromkeys(p.stem for p in paths))
        train = [e for path in paths for e in read_examples(path, kind, renames)]
        source = val_source = f"task_files={task_files!r}"
        if val_files:
            val = [e for path in resolve(val_files, "val_files") for e in read_examples(path, kind, renames)]
            val_source = f"val_files={val_files!r}"
        else:
            train, val = ([e for e in train if in_validation(e.fields, val_percent) == side] for side in (False, True))
    _check_split(train, val, source, val_source, val_percent if not val_files else None)
    labels = _labels(section["labels"], kind, train, val, source)
    if max_examples:
        train = subset(train, max_examples)
    data = TaskData(name, kind, train, val, labels, fingerprint(kind, labels, train, val))
    log(describe(data))
    return data


def _builtin_kind(section) -> str:
    task = section["task"]
    if task not in stdlib.BUILTIN:
        raise DataError(f"task={task!r}: no such built-in task; choose one of {', '.join(sorted(stdlib.BUILTIN))}, "
                        f"or give your own examples with task_files.")
    kind = stdlib.BUILTIN[task]
    if section["kind"] not in ("", kind):
        raise DataError(f"kind={section['kind']!r}: the built-in task {task!r} is {kind}; set kind=\"\".")
    for key in ("fields", "val_files"):
        if section[key]:
            raise DataError(f"{key}={section[key]!r}: applies to task_files only; the built-in task {task!r} "
                            f"has its own; set {key}=\"\".")
    return kind


def _renames(spec: str, kind: str) -> dict[str, str]:
    """`fields`, "canonical=column,...", as {canonical: column}."""
    renames = {}
    for item in filter(None, (i.strip() for i in spec.split(","))):
        canonical, _, column = (part.strip() for part in item.partition("="))
        if canonical not in FIELDS[kind] or not column or canonical in renames:
            raise DataError(f"fields={spec!r}: {item!r} is not \"canonical=column\" for a field of a {kind} task "
                            f"({', '.join(FIELDS[kind])}), each named once; e.g. "
                            f"fields=\"{FIELDS[kind][0]}=your_column\".")
        renames[canonical] = column
    return renames


def _check_split(train: list[Example], val: list[Example], source: str, val_source: str, val_percent) -> None:
    if val_percent is None:  # Explicit validation files.
        for examples, where in ((train, source), (val, val_source)):
            if not examples:
                raise DataError(f"{where}: no examples; give files with at least one example.")
        return
    total = len(train) + len(val)
    if not total:
        raise DataError(f"{source}: no examples; give files with at least one example.")
    if not train:
        raise DataError(f"{source}: none of the {total} examples is left for training at val_percent={val_percent}; "
                        f"lower val_percent or give more examples.")
    if not val:
        raise DataError(f"{source}: none of the {total} examples is held out for validation at "
                        f"val_percent={val_percent}; raise val_percent, give more examples, or give val_files.")


def _labels(spec: str, kind: str, train: list[Example], val: list[Example], source: str) -> tuple[str, ...] | None:
    """The label set: the given one, in the order given, or else the training labels sorted
    (as strings). Every example's label must be in it."""
    if kind != "classification":
        return None
    if spec:
        labels = label_set.parse(spec)
        if not labels:
            raise DataError(f"labels={spec!r}: the label set is empty; name the classes, comma-separated, or set "
                            f"labels=\"\" to use the training labels.")
        if len(set(labels)) != len(labels):
            raise DataError(f"labels={spec!r}: a label is named twice; name each class once.")
    else:
        labels = tuple(sorted({e.fields["label"] for e in train}))
    if len(labels) < 2:
        raise DataError(f"labels={spec!r}: one label is no choice; name every class." if spec else
                        f"{source}: the training examples have fewer than two labels ({list(labels)}); "
                        f"a classifier needs at least two: give more data.")
    known = set(labels)
    for example in train + val:
        if example.fields["label"] not in known:
            origin = "given" if spec else "found in the training split"
            raise DataError(f"{example.where}: label {example.fields['label']!r} is not in the label set {origin} "
                            f"{list(labels)}; add it to labels= or correct the example.")
    return labels


def _materialise(name: str, val_percent: float, cache_dir: Path, log) -> Path:
    """The directory holding built-in task `name` as train.jsonl and val.jsonl, built now
    unless a build from the same stdlib, builder and split is already there. It is written
    whole under a temporary name and renamed, so a directory that exists is complete."""
    files = stdlib.source_files()
    directory = cache_dir / f"task-{name}-{stdlib.source_key(name, val_percent, files)}"
    if directory.is_dir():
        return directory
    start = time.perf_counter()
    examples = stdlib.build(name, files)
    splits = {"train": [], "val": []}
    for fields in examples:
        splits["val" if in_validation(fields, val_percent) else "train"].append(fields)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=cache_dir))
        try:
            for split, rows in splits.items():
                lines = "".join(json.dumps(fields, ensure_ascii=False) + "\n" for fields in rows)
                (tmp / f"{split}.jsonl").write_text(lines, encoding="utf-8")
            tmp.rename(directory)
        except OSError:
            if not directory.is_dir():  # Unless another process built the same task first.
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as error:
        raise DataError(f"{cache_dir}: cannot write the built-in task {name!r} there ({error.strerror or error}); "
                        f"free some space or make the cache directory writable.") from None
    log(f"task {name}: built {len(examples):,} examples from {stdlib_root()} in "
        f"{time.perf_counter() - start:.1f} s into {directory}")
    return directory
