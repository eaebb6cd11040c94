"""Two demo tasks made from the Python standard library's own functions, so that fine-tuning
can be tried fully offline on text like the default pretraining corpus:

- stdlib_package (classification): which stdlib package a function is from, given its code;
- stdlib_docstring (generation): a function's one-line docstring summary, given its code.

Docstrings are cut out of the code in both, so neither task is solved by reading them. The
tasks depend only on the stdlib's files, so the same Python install builds the same tasks.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import hashlib
import sys
from pathlib import Path

from llmjax.data.sources import stdlib_root

BUILTIN = {"stdlib_package": "classification", "stdlib_docstring": "generation"}
SKIPPED_DIRECTORIES = {"test", "tests", "idle_test", "site-packages", "__pycache__"}  # Tests and installs.
FUNCTION_CHARS = (80, 1200)  # Whole functions this long are used: long enough to say something, short enough to fit.
PROMPT_CHARS = (80, 1000)  # stdlib_docstring: the code without its docstring.
SUMMARY_CHARS = (12, 100)
PACKAGES = 8  # stdlib_package: the packages with the most functions become the labels,
PER_PACKAGE = 400  # each with at most this many, so that the majority class stays far below half.


@dataclasses.dataclass(frozen=True)
class Function:
    package: str | None  # The top-level package directory; None for a single-file module.
    code: str  # The function's source, dedented, without its docstring.
    summary: str | None  # The docstring's one-line summary, when it is one sentence.


def source_files() -> list[tuple[str, Path]]:
    """(path relative to the stdlib, path) of every stdlib .py file outside tests, sorted."""
    root = stdlib_root()
    files = ((p.relative_to(root).as_posix(), p) for p in root.rglob("*.py"))
    return sorted((rel, p) for rel, p in files if not SKIPPED_DIRECTORIES.intersection(rel.split("/")))


def source_key(name: str, val_percent: float, files: list[tuple[str, Path]]) -> str:
    """What the built task depends on, hashed without building it, so a cached copy can be
    found: this builder's own code, the interpreter, the stdlib files' names, sizes and times,
    and the split."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"{name}\n{val_percent!r}\n{sys.version}\n".encode())
    for rel, path in files:
        stat = path.stat()
        digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build(name: str, files: list[tuple[str, Path]]) -> list[dict]:
    """The fields of every example of built-in task `name`, in stdlib path order."""
    functions = [f for rel, path in files for f in _functions(rel, path)]
    if name == "stdlib_package":
        return _package_task(functions)
    return _docstring_task(functions)


def _package_task(functions: list[Function]) -> list[dict]:
    candidates = _unique([f for f in functions if f.package], key=lambda f: f.code)
    counts = collections.Counter(f.package for f in candidates)
    labels = {package for package, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:PACKAGES]}
    taken = collections.Counter()
    examples = []
    for function in candidates:
        if function.package in labels and taken[function.package] < PER_PACKAGE:
            taken[function.package] += 1
            examples.append({"text": function.code, "label": function.package})
    return examples


def _docstring_task(functions: list[Function]) -> list[dict]:
    candidates = [f for f in functions if f.summary and PROMPT_CHARS[0] <= len(f.code) <= PROMPT_CHARS[1]]
    return [{"prompt": f.code, "response": f.summary} for f in _unique(candidates, key=lambda f: f.code)]


def _unique(functions: list[Function], key) -> list[Function]:
    """Functions whose code occurs once: the same code in two places (say, a package label
    for each) would be an example no model could get right, or one on both sides of the split."""
    counts = collections.Counter(key(f) for f in functions)
    return [f for f in functions if counts[key(f)] == 1]


def _functions(rel: str, path: Path) -> list[Function]:
    """The top-level functions and methods of top-level classes in one file whose source is
    FUNCTION_CHARS long. A file that is not valid Python (for this interpreter) is skipped."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=rel)
    except (SyntaxError, ValueError):  # ValueError: undecodable bytes or a NUL byte.
        return []
    lines = source.split("\n")  # As ast counts lines (str.splitlines would also split at form feeds).
    package = rel.split("/")[0] if "/" in rel else None
    nodes = [n for top in tree.body for n in ([top] + (top.body if isinstance(top, ast.ClassDef) else []))]
    functions = []
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            code = _code_without_docstring(node, lines)
            if code is not None:
                functions.append(Function(package, code, _summary(node)))
    return functions


def _code_without_docstring(node, lines: list[str]) -> str | None:
    """The function's source (ast.get_source_segment), every line moved left by the `def`
    line's indentation, with the lines of its docstring removed; None when it is not
    FUNCTION_CHARS long, or when the docstring shares a line with other code or is all the
    body there is. Sliced from `lines` here because get_source_segment splits the whole file
    again for each function; not textwrap.dedent, which leaves a method indented when a
    string in it has a line at column 0."""
    segment = lines[node.lineno - 1:node.end_lineno]
    segment[-1] = segment[-1].encode()[:node.end_col_offset].decode()  # Offsets count UTF-8 bytes.
    indent = segment[0][:node.col_offset]
    segment = [line.removeprefix(indent) for line in segment]
    code = "\n".join(segment)
    if not FUNCTION_CHARS[0] <= len(code) <= FUNCTION_CHARS[1]:
        return None
    docstring = node.body[0] if ast.get_docstring(node, clean=False) is not None else None
    if docstring is None:
        return code
    before = lines[docstring.lineno - 1].encode()[:docstring.col_offset].strip()
    after = lines[docstring.end_lineno - 1].encode()[docstring.end_col_offset:].strip()
    if len(node.body) == 1 or before or (after and not after.startswith(b"#")):
        return None
    start, end = docstring.lineno - node.lineno, docstring.end_lineno - node.lineno + 1
    return "\n".join(segment[:start] + segment[end:])


def _summary(node) -> str | None:
    """The docstring's first line when it is a whole sentence on its own: SUMMARY_CHARS long,
    starting with a letter, ending with a period and followed by a blank line or nothing (a
    first line that wraps on is only part of a sentence)."""
    docstring = ast.get_docstring(node, clean=True)
    if not docstring:
        return None
    lines = docstring.splitlines()
    summary = lines[0].strip()
    whole = len(lines) == 1 or not lines[1].strip()
    if (whole and SUMMARY_CHARS[0] <= len(summary) <= SUMMARY_CHARS[1] and summary[0].isalpha()
            and summary.endswith(".") and not summary.endswith("..")):
        return summary
    return None
