"""llmjax.tasks: the built-in stdlib tasks, examples read from JSONL and Parquet files, the
hash split, label sets, and one clear DataError for each kind of bad input."""

import ast
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import ml_collections
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmjax.data.errors import DataError
from llmjax.tasks import BUILTIN, KINDS, Example, describe, load, majority_label, stdlib
from llmjax.tasks.examples import in_validation
from llmjax.train.objectives.task import spread

QUIET = dict(log=lambda *_: None)


def section(**overrides):
    values = dict(task="", task_files="", val_files="", kind="classification", fields="", labels="",
                  val_percent=10.0, max_examples=0)
    return ml_collections.ConfigDict({**values, **overrides})


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def fields(examples):
    return [e.fields for e in examples]


# Built-in tasks: each built once per module (a few seconds each), then read from the cache.

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def built(cache):
    return {name: load(section(task=name, kind=""), cache, **QUIET) for name in BUILTIN}


def _function(code):
    """The one function in `code`, which must still be valid Python."""
    (node,) = ast.parse(code).body
    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    return node


def test_package_task_is_balanced_held_out_and_free_of_docstrings(built):
    task = built["stdlib_package"]
    assert task.kind == "classification" and len(task.labels) == 8 and list(task.labels) == sorted(task.labels)
    assert {e.fields["label"] for e in task.train + task.val} == set(task.labels)
    counts = [sum(e.fields["label"] == label for e in task.train + task.val) for label in task.labels]
    assert max(counts) <= 400
    share = sum(e.fields["label"] == majority_label(task.train) for e in task.train) / len(task.train)
    assert share < 0.5 and f"majority {share:.1%}" in describe(task)
    assert not {e.fields["text"] for e in task.train} & {e.fields["text"] for e in task.val}
    assert 0.05 < len(task.val) / (len(task.train) + len(task.val)) < 0.15
    for example in task.train + task.val:
        assert ast.get_docstring(_function(example.fields["text"])) is None, example.where


def test_docstring_task_answers_with_the_removed_summary(built):
    task = built["stdlib_docstring"]
    assert task.kind == "generation" and task.labels is None and len(task.train) > 1000 and len(task.val) > 100
    assert not {e.fields["prompt"] for e in task.train} & {e.fields["prompt"] for e in task.val}
    for example in task.train + task.val:
        prompt, response = example.fields["prompt"], example.fields["response"]
        assert ast.get_docstring(_function(prompt)) is None, example.where
        assert 80 <= len(prompt) <= 1000 and 12 <= len(response) <= 100
        assert response.endswith(".") and "\n" not in response and response == response.strip()


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_task_is_read_back_from_the_cache_unchanged(name, built, cache, monkeypatch):
    monkeypatch.setattr(stdlib, "build", lambda *_: pytest.fail("rebuilt a cached task"))
    lines = []
    again = load(section(task=name, kind=""), cache, log=lines.append)
    assert again == built[name] and again.fingerprint == built[name].fingerprint
    assert lines == [describe(again)]  # Only the counts: nothing was built.
    directory = Path(again.train[0].where.rsplit(":", 1)[0]).parent
    assert directory.parent == cache and directory.name.startswith(f"task-{name}-")


def test_builtin_build_is_deterministic(built, tmp_path):
    fresh = load(section(task="stdlib_package", kind=""), tmp_path, **QUIET)
    old = built["stdlib_package"]
    assert fresh.fingerprint == old.fingerprint and fresh.labels == old.labels
    assert fields(fresh.train) == fields(old.train) and fields(fresh.val) == fields(old.val)


def test_the_cache_key_covers_what_the_task_depends_on():
    files = stdlib.source_files()
    key = stdlib.source_key("stdlib_package", 10.0, files)
    assert key == stdlib.source_key("stdlib_package", 10.0, files)
    assert key != stdlib.source_key("stdlib_package", 20.0, files)
    assert key != stdlib.source_key("stdlib_docstring", 10.0, files)
    assert key != stdlib.source_key("stdlib_package", 10.0, files[1:])


# Files.

ROWS = [{"sentence": f"example number {i}", "sentiment": ["pos", "neg", "meh"][i % 3], "id": i} for i in range(60)]


def test_jsonl_and_parquet_give_the_same_examples_under_renamed_fields(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "reviews.jsonl", ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "reviews.parquet")
    options = dict(fields="text=sentence, label=sentiment", val_percent=25.0)
    from_jsonl = load(section(task_files="reviews.jsonl", **options), tmp_path, **QUIET)
    from_parquet = load(section(task_files="*.parquet", **options), tmp_path, **QUIET)
    assert from_jsonl.name == from_parquet.name == "reviews"
    assert fields(from_jsonl.train + from_jsonl.val)[0] == {"text": "example number 0", "label": "pos"}
    assert fields(from_jsonl.train) == fields(from_parquet.train) and fields(from_jsonl.val) == fields(from_parquet.val)
    assert from_jsonl.fingerprint == from_parquet.fingerprint
    assert from_jsonl.labels == ("meh", "neg", "pos")
    assert from_jsonl.train[0].where == "reviews.jsonl:1" and from_parquet.train[0].where == "reviews.parquet:row 1"


def _held_out(row, val_percent):
    """The split rule, spelled out independently: the first 8 hex digits of the SHA-256 of the
    fields' canonical JSON, modulo 10,000, below val_percent * 100."""
    canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int(hashlib.sha256(canonical.encode()).hexdigest()[:8], 16) % 10_000 < val_percent * 100


def test_the_split_is_a_hash_of_each_example_not_of_its_place(tmp_path):
    rows = [{"text": f"t{i % 150} é", "label": str(i % 150 % 2)} for i in range(200)]  # 50 repeated examples.
    write_jsonl(tmp_path / "a.jsonl", rows)
    task = load(section(task_files=str(tmp_path / "a.jsonl"), val_percent=20.0), tmp_path, **QUIET)
    assert fields(task.val) == [r for r in rows if _held_out(r, 20.0)]  # File order kept.
    assert fields(task.train) == [r for r in rows if not _held_out(r, 20.0)]
    assert 0.1 < len(task.val) / len(rows) < 0.3
    assert not {e.fields["text"] for e in task.train} & {e.fields["text"] for e in task.val}
    shuffled = random.Random(0).sample(rows, len(rows))
    write_jsonl(tmp_path / "b.jsonl", shuffled[:120])
    write_jsonl(tmp_path / "c.jsonl", shuffled[120:])
    reshuffled = load(section(task_files=f"{tmp_path}/c.jsonl,{tmp_path}/b.jsonl", val_percent=20.0), tmp_path, **QUIET)
    assert sorted(map(json.dumps, fields(reshuffled.val))) == sorted(map(json.dumps, fields(task.val)))
    assert reshuffled.fingerprint != task.fingerprint  # The same examples in another order: another run.
    assert reshuffled.name == "c+b"


def test_val_files_are_the_validation_split_and_max_examples_cuts_train(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(30)])
    write_jsonl(tmp_path / "dev.jsonl", [{"prompt": "q", "response": "s"}])
    options = dict(task_files=str(tmp_path / "train.jsonl"), val_files=str(tmp_path / "dev.jsonl"), kind="generation")
    task = load(section(**options), tmp_path, **QUIET)
    assert len(task.train) == 30 and fields(task.val) == [{"prompt": "q", "response": "s"}] and task.labels is None
    quick = load(section(**options, max_examples=5), tmp_path, **QUIET)
    assert len(quick.train) == 5 and quick.val == task.val and quick.fingerprint != task.fingerprint
    kept = [task.train.index(e) for e in quick.train]
    assert kept == sorted(kept) and kept != list(range(5))  # A sample in file order, not the file's head.


def test_max_examples_samples_every_group_of_a_grouped_file(tmp_path):
    """Files often list examples grouped (by label, by source): the subset must not be the first groups."""
    write_jsonl(tmp_path / "a.jsonl", [{"text": f"t{i}", "label": f"l{i // 100}"} for i in range(800)])
    options = dict(task_files=str(tmp_path / "a.jsonl"), val_percent=10.0)
    quick = load(section(**options, max_examples=80), tmp_path, **QUIET)
    again = load(section(**options, max_examples=80), tmp_path, **QUIET)
    assert len(quick.train) == 80 and quick.train == again.train
    assert {e.fields["label"] for e in quick.train} == {f"l{k}" for k in range(8)}


def test_given_labels_keep_their_order_and_integer_labels_are_names(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": f"t{i}", "label": i % 3} for i in range(40)])
    inferred = load(section(task_files=str(tmp_path / "a.jsonl"), val_percent=30.0), tmp_path, **QUIET)
    given = load(section(task_files=str(tmp_path / "a.jsonl"), val_percent=30.0, labels="2, 0,1,9"), tmp_path, **QUIET)
    assert inferred.labels == ("0", "1", "2") and given.labels == ("2", "0", "1", "9")
    assert fields(given.train) == fields(inferred.train) and given.fingerprint != inferred.fingerprint
    assert majority_label(given.train) in ("0", "1", "2")


def test_labels_with_commas_or_edge_spaces_survive_the_config_string(tmp_path):
    """The label set found in the data is written into objective.labels and read back from it
    (the head's size, every later evaluation): "good, really" and " pos" stay whole."""
    from llmjax.tasks import labels as label_set  # noqa: PLC0415

    names = ["good, really", " pos", "bad"]
    write_jsonl(tmp_path / "a.jsonl", [{"text": f"t{i}", "label": names[i % 3]} for i in range(40)])
    found = load(section(task_files=str(tmp_path / "a.jsonl"), val_percent=30.0), tmp_path, **QUIET).labels
    assert sorted(found) == sorted(names)
    written = label_set.format(found)
    assert label_set.parse(written) == found
    again = load(section(task_files=str(tmp_path / "a.jsonl"), val_percent=30.0, labels=written), tmp_path, **QUIET)
    assert again.labels == found
    assert label_set.format(("neg", "pos")) == "neg,pos" and label_set.parse(" neg, pos,") == ("neg", "pos")
    with pytest.raises(DataError, match="not a JSON list"):
        label_set.parse('["a", ')


def test_chat_messages_keep_only_role_and_content(tmp_path):
    messages = [{"role": "user", "content": "hi", "name": "x"}, {"role": "assistant", "content": "hello"}]
    write_jsonl(tmp_path / "chat.jsonl", [{"conversation": messages}] * 2 + [{"conversation": messages[1:]}] * 2)
    task = load(section(task_files=str(tmp_path / "chat.jsonl"), kind="chat", fields="messages=conversation",
                        val_files=str(tmp_path / "chat.jsonl")), tmp_path, **QUIET)
    assert task.train[0].fields == {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert describe(task) == "task chat: 4 train / 4 val examples (chat)" and set(KINDS) >= {task.kind}


def test_majority_label_breaks_ties_by_name():
    examples = [Example({"text": "x", "label": label}, "f:1") for label in ("b", "a", "b", "a", "c")]
    assert majority_label(examples) == "a"


# Bad input: one line naming the file (and line) and the fix.

def _side(val_percent, want_val):
    """A one-example file whose example lands on the wanted side of the split."""
    for i in range(1000):
        row = {"text": f"x{i}", "label": "a"}
        if in_validation(row, val_percent) == want_val:
            return [row]
    raise AssertionError


GOOD = [{"text": "good", "label": "a"}, {"text": "fine", "label": "b"}]
ERRORS = {  # id: (files, section overrides, what the message must say)
    "no such file": ({}, dict(task_files="nope.jsonl"), ["'nope.jsonl'", "no such file", "check the path"]),
    "no match": ({}, dict(task_files="data/*.jsonl"), ["'data/*.jsonl'", "no files match", "check the pattern"]),
    "suffix": ({"a.csv": "text,label\n"}, dict(task_files="a.csv"), ["a.csv:", "convert it"]),
    "not json": ({"a.jsonl": GOOD + ['{"text": "x",']}, {}, ["a.jsonl:3:", "not valid JSON", "one JSON object"]),
    "not an object": ({"a.json": ["[1, 2]"]}, {}, ["a.json:1:", "not an object", "one object"]),
    "missing field": ({"a.jsonl": GOOD + [{"sentence": "s", "label": "a"}]}, {},
                      ["a.jsonl:3:", "'text'", "['label', 'sentence']", 'fields="text=column"']),
    "missing renamed": ({"a.jsonl": GOOD}, dict(fields="text=sentence"),
                        ["a.jsonl:1:", "'sentence' (the text", "['label', 'text']", 'fields="text=column"']),
    "missing column": ({"a.parquet": [{"sentence": "s", "label": "a"}]}, {},
                       ["a.parquet:", "'text'", "['sentence', 'label']", 'fields="text=column"']),
    "empty field": ({"a.jsonl": GOOD + [{"text": "  ", "label": "a"}]}, {}, ["a.jsonl:3:", "'text' is empty", "remove the line"]),
    "empty in parquet": ({"a.parquet": GOOD + [{"text": "", "label": "b"}]}, {}, ["a.parquet:row 3:", "empty"]),
    "wrong type": ({"a.jsonl": [{"text": ["a"], "label": "a"}]}, {}, ["a.jsonl:1:", "is a list, not a string", "kind="]),
    "not chat": ({"a.jsonl": [{"messages": "hello"}]}, dict(kind="chat"),
                 ["a.jsonl:1:", "'messages' is a str", "{\"role\": str, \"content\": str}"]),
    "chat message": ({"a.jsonl": [{"messages": [{"role": "user"}]}]}, dict(kind="chat"),
                     ["a.jsonl:1:", "message 1", "{role, content}", "check kind='chat'"]),
    "empty label set": ({"a.jsonl": GOOD}, dict(labels=" , "), ["labels=' , '", "empty", 'labels=""']),
    "one given label": ({"a.jsonl": GOOD}, dict(labels="a"), ["labels='a'", "name every class"]),
    "one label": ({"a.jsonl": [{"text": f"t{i}", "label": "a"} for i in range(50)]}, {},
                  ["task_files='a.jsonl'", "['a']", "fewer than two", "give more data"]),
    "label not given": ({"a.jsonl": GOOD + [{"text": "hm", "label": "c"}]}, dict(labels="a,b"),
                        ["a.jsonl:3:", "label 'c'", "['a', 'b']", "add it to labels="]),
    "label not trained": ({"a.jsonl": GOOD, "v.jsonl": [{"text": "new", "label": "z"}]}, dict(val_files="v.jsonl"),
                          ["v.jsonl:1:", "label 'z'", "found in the training split ['a', 'b']", "add it to labels="]),
    "duplicate label": ({"a.jsonl": GOOD}, dict(labels="a,b,a"), ["labels='a,b,a'", "named twice"]),
    "no train": ({"a.jsonl": _side(50.0, True)}, dict(val_percent=50.0), ["task_files='a.jsonl'", "lower val_percent"]),
    "no val": ({"a.jsonl": _side(50.0, False)}, dict(val_percent=50.0), ["task_files='a.jsonl'", "raise val_percent"]),
    "empty val files": ({"a.jsonl": GOOD, "v.jsonl": []}, dict(val_files="v.jsonl"), ["val_files='v.jsonl'", "no examples"]),
    "empty task file": ({"a.jsonl": []}, {}, ["a.jsonl", "no examples"]),
    "damaged parquet": ({"a.parquet": b"PAR1 not really"}, {}, ["a.parquet:", "cannot be read as Parquet", "replace it"]),
    "no kind": ({"a.jsonl": GOOD}, dict(kind=""), ["kind=''", "classification, generation, chat"]),
    "bad fields": ({"a.jsonl": GOOD}, dict(fields="txt=sentence"), ["fields='txt=sentence'", "text=your_column"]),
    "labels for generation": ({"a.jsonl": GOOD}, dict(kind="generation", labels="a,b"), ["labels='a,b'", 'labels=""']),
    "val_percent": ({"a.jsonl": GOOD}, dict(val_percent=0.0), ["val_percent=0.0", "or give val_files"]),
    "max_examples": ({"a.jsonl": GOOD}, dict(max_examples=-1), ["max_examples=-1", "0 for all"]),
    "unknown task": ({}, dict(task="glue", kind=""), ["task='glue'", "stdlib_docstring, stdlib_package"]),
    "both": ({"a.jsonl": GOOD}, dict(task="stdlib_package"), ["task_files='a.jsonl'", "not both"]),
    "neither": ({}, {}, ["task=''", "give one of them"]),
    "builtin kind": ({}, dict(task="stdlib_package", kind="chat"), ["kind='chat'", "set kind=\"\""]),
    "builtin fields": ({}, dict(task="stdlib_docstring", kind="", fields="prompt=x"),
                       ["fields='prompt=x'", "task_files only"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_one_line_naming_the_file_and_fix(case, tmp_path, monkeypatch):
    files, overrides, expected = ERRORS[case]
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        elif name.endswith(".parquet"):
            pq.write_table(pa.Table.from_pylist(content), tmp_path / name)
        else:
            write_jsonl(tmp_path / name, content) if isinstance(content, list) else (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as error:
        load(section(**{"task_files": next(iter(files), ""), **overrides}), tmp_path / "cache", **QUIET)
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)
    assert not (tmp_path / "cache").exists()  # Nothing written for a task that fails.


def test_the_task_layer_does_not_import_jax():
    """Data loading and the lm-eval adapter use it without paying for (or configuring) JAX."""
    code = "import sys, llmjax.tasks; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


def test_a_subset_of_the_held_out_examples_is_spread_through_the_file():
    """320 examples listed label by label (40 each): the 16 a smoke run scores cover every label,
    where the first 16 were all of the first; a count that covers the file takes all, in order."""
    labels = [i // 40 for i in range(320)]
    chosen = spread(16, 320)
    assert len(chosen) == 16 == len(set(chosen)) and chosen == sorted(chosen)
    assert {labels[i] for i in chosen} == set(range(8))
    assert spread(320, 320) == spread(500, 320) == list(range(320))
