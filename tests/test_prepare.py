"""llmjax-prepare: input formats, tokenizers, parallel and resumed preparation, bad input."""

import gzip
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from llmjax.config import default_config
from llmjax.data.dataset import check_tokenizer, open_dataset, resolve
from llmjax.data.errors import DataError
from llmjax.data.prepare import PrepareOptions, prepare, token_counts
from llmjax.data.shards import ShardWriter, index_path
from llmjax.data import sources
from llmjax.data.tokenizer import TextTokenizer, bounded_runs
from llmjax.train import objectives

QUIET = dict(log=lambda *_: None, progress=False)


def _documents(count=30, seed=0):
    rng = np.random.default_rng(seed)
    words = ["def", "return", "alpha", "beta", "(x):", "é", "日本", "\n", "  ", "+", "1"]
    return [" ".join(rng.choice(words, rng.integers(5, 200))) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    base = tmp_path_factory.mktemp("tok")
    (base / "text").mkdir()
    for i, doc in enumerate(_documents()):
        (base / "text" / f"{i}.txt").write_text(doc)
    out = prepare(PrepareOptions(inputs=(str(base / "text"),), vocab_size=280, workers=1), base / "ds", **QUIET)
    return out / "tokenizer.json"


def _stream(directory, split="train"):
    return np.asarray(open_dataset(directory).stream(split))


def test_every_format_gives_the_same_token_stream(tmp_path, tokenizer_file):
    docs = _documents(25, seed=1)
    lines = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))
    (tmp_path / "a.jsonl").write_text(lines)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    import zstandard  # noqa: PLC0415
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415
    pq.write_table(pa.table({"id": list(range(len(docs))), "body": docs}), tmp_path / "d.parquet")
    (tmp_path / "text").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "text" / f"{i:02d}.txt").write_text(d)
    streams = []
    for name, inputs, field in (("jsonl", "a.jsonl", "text"), ("gz", "b.jsonl.gz", "text"),
                                ("zst", "c.jsonl.zst", "text"), ("parquet", "d.parquet", "body"),
                                ("txt", "text", "text")):
        out = prepare(PrepareOptions(inputs=(str(tmp_path / inputs),), text_field=field, val_percent=0,
                                     tokenizer=str(tokenizer_file), workers=1), tmp_path / name, **QUIET)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["splits"]["train"]["documents"] == len(docs), name
        assert manifest["tokenizer"]["fingerprint"] == TextTokenizer(tokenizer_file).fingerprint
        streams.append(_stream(out))
    tokenizer = TextTokenizer(tokenizer_file)
    expected = np.concatenate([ids + [tokenizer.eos_id] for ids in tokenizer.encode_batch(docs)])
    for stream in streams:
        np.testing.assert_array_equal(stream, expected)


def test_manifest_counts_and_split(tmp_path):
    (tmp_path / "in").mkdir()
    docs = _documents(60, seed=2)
    for i, d in enumerate(docs):
        (tmp_path / "in" / f"{i:02d}.txt").write_text(d)
    out = prepare(PrepareOptions(inputs=(str(tmp_path / "in"),), vocab_size=300, val_percent=20, workers=1),
                  tmp_path / "ds", **QUIET)
    manifest = json.loads((out / "manifest.json").read_text())
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["documents"] + val["documents"] == 60 and 3 <= val["documents"] <= 25
    for split in ("train", "val"):
        stream = _stream(out, split)
        eos = open_dataset(out).eos_id
        assert stream.size == manifest["splits"][split]["tokens"]
        assert int((stream == eos).sum()) == manifest["splits"][split]["documents"]
        for shard in manifest["splits"][split]["shards"]:  # The index marks each document's end.
            ends = np.load(out / (shard["file"] + ".idx.npy"))
            tokens = np.fromfile(out / shard["file"], dtype=manifest["token_dtype"])
            assert len(ends) == shard["documents"] and (tokens[ends - 1] == eos).all()
    assert train["bytes"] + val["bytes"] == sum(len(d.encode()) for d in docs)
    # The tokenizer round-trips text and its byte counts are the bytes the tokens stand for.
    tokenizer = TextTokenizer(out / "tokenizer.json")
    ids = tokenizer.encode_batch([docs[0]])[0]
    assert tokenizer.decode(ids) == docs[0]
    assert tokenizer.token_bytes()[ids].sum() == len(docs[0].encode())
    assert manifest["unigram_entropy_nats"] > 0


def test_overlapping_or_added_inputs_move_no_document_across_the_split(tmp_path):
    """A file named by two inputs is one document, on one side; adding an input leaves every
    earlier document's id, which decides its side, as it was."""
    (tmp_path / "in").mkdir()
    (tmp_path / "extra").mkdir()
    for i, d in enumerate(_documents(40, seed=4)):
        (tmp_path / "in" / f"{i:02d}.txt").write_text(d)
    (tmp_path / "extra" / "00.txt").write_text("another document with the name of one in in/")
    ids = lambda *inputs: [f.relpath for f in sources.find_inputs([str(tmp_path / i) for i in inputs])]  # noqa: E731
    one = ids("in")
    assert ids("in", "in/*.txt") == one
    added = ids("in", "extra")
    assert set(one) < set(added) and len(added) == 41
    # A directory reads the files under symlinked directories as a glob does, each once (a link
    # looping back to an ancestor included).
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "a.txt").write_text("text behind a link")
    (tmp_path / "in" / "link").symlink_to(tmp_path / "linked")
    (tmp_path / "linked" / "loop").symlink_to(tmp_path / "in")
    assert ids("in") == sorted([*one, "link/a.txt"])
    (tmp_path / "in" / "link").unlink()
    counts = {}
    for name, inputs in (("one", ("in",)), ("both", ("in", "in/*.txt"))):
        out = prepare(PrepareOptions(inputs=tuple(str(tmp_path / i) for i in inputs), vocab_size=300,
                                     val_percent=30, workers=1), tmp_path / name, **QUIET)
        counts[name] = {split: (v["documents"], v["tokens"])
                        for split, v in json.loads((out / "manifest.json").read_text())["splits"].items()}
    assert counts["both"] == counts["one"] and counts["one"]["val"][0] > 0


def test_parallel_preparation_equals_serial(tmp_path):
    (tmp_path / "in").mkdir()
    for i, d in enumerate(_documents(40, seed=3)):
        (tmp_path / "in" / f"{i:02d}.txt").write_text(d)
    options = dict(inputs=(str(tmp_path / "in"),), vocab_size=300, val_percent=10)
    serial = prepare(PrepareOptions(**options, workers=1), tmp_path / "serial", **QUIET)
    parallel = prepare(PrepareOptions(**options, workers=2), tmp_path / "parallel", **QUIET)
    assert len(list(parallel.glob("train-*.bin"))) > 2  # It really was cut into several units.
    for split in ("train", "val"):
        np.testing.assert_array_equal(_stream(serial, split), _stream(parallel, split))


def test_sentencepiece_tokenizer(tmp_path):
    import sentencepiece  # noqa: PLC0415
    docs = [d.replace("\n", " ") for d in _documents(40, seed=4)]  # SentencePiece reads lines.
    (tmp_path / "train.txt").write_text("\n".join(docs))
    sentencepiece.SentencePieceTrainer.train(  # Settings under which decode(encode(text)) == text.
        input=str(tmp_path / "train.txt"), model_prefix=str(tmp_path / "sp"), vocab_size=290, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        minloglevel=2)
    (tmp_path / "in").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "in" / f"{i:02d}.txt").write_text(d)
    out = prepare(PrepareOptions(inputs=(str(tmp_path / "in"),), tokenizer=str(tmp_path / "sp.model"),
                                 val_percent=0, workers=1), tmp_path / "ds", **QUIET)
    dataset = open_dataset(out)
    assert (out / "tokenizer.model").is_file() and dataset.vocab_size == 290
    tokenizer = dataset.tokenizer
    ids = tokenizer.encode_batch([docs[0]])[0]
    assert tokenizer.decode(ids) == docs[0]
    assert tokenizer.token_bytes()[ids].sum() == len(docs[0].encode())
    assert _stream(out).size == sum(len(i) + 1 for i in tokenizer.encode_batch(docs))


def test_interrupted_preparation_resumes_and_matches(tmp_path):
    (tmp_path / "in").mkdir()
    for i, d in enumerate(_documents(120, seed=5)):
        (tmp_path / "in" / f"{i:03d}.txt").write_text(d)
    args = [sys.executable, "-m", "llmjax.cli.prepare", f"--input={tmp_path / 'in'}", "--vocab_size=300",
            "--workers=1", "--shard_mb=0.001"]
    reference = subprocess.run(args + [f"--out={tmp_path / 'ref'}"], cwd=ROOT, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    job = subprocess.Popen(args + [f"--out={tmp_path / 'cut'}"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while not list((tmp_path / "cut").glob("unit-0001*.json")) and time.time() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not (tmp_path / "cut" / "manifest.json").exists(), "killed too late to test resuming"
    with pytest.raises(DataError, match="unfinished preparation; rerun"):
        open_dataset(tmp_path / "cut")
    resumed = subprocess.run(args + [f"--out={tmp_path / 'cut'}"], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "units already done" in resumed.stdout
    assert not list((tmp_path / "cut").glob("*.tmp"))
    ref, cut = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("ref", "cut"))
    assert ref == cut
    for shard in ref["splits"]["train"]["shards"] + ref["splits"]["val"]["shards"]:
        assert (tmp_path / "ref" / shard["file"]).read_bytes() == (tmp_path / "cut" / shard["file"]).read_bytes()
    again = subprocess.run(args + [f"--out={tmp_path / 'cut'}"], cwd=ROOT, capture_output=True, text=True)
    assert "nothing to do" in again.stdout


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _units_done(out):
    return len(list(out.glob("unit-*.json")))


def _kill_at(args, out, units, seconds):
    """Runs `args`, SIGKILLs its main process `seconds` after `units` units of `out` are done
    (unless it ends first) and returns where the preparation then stood and the session id.
    Its tokenizing workers are orphaned mid-unit, as when kill -9 or the OOM killer hits it."""
    job = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.time() + 120
    while job.poll() is None and _units_done(out) < units and time.time() < deadline:
        time.sleep(0.005)
    try:
        job.wait(timeout=seconds)
        return "ended", job.pid
    except subprocess.TimeoutExpired:
        job.kill()
        job.wait()
    if (out / "manifest.json").exists():
        return "finished", job.pid
    return ("no tokenizer" if not (out / "tokenizer.json").exists() else f"{_units_done(out)} units"), job.pid


def test_preparation_killed_at_random_moments_finishes_byte_identical(tmp_path):
    """SIGKILLed at seeded random moments, each rerun continuing the same directory while the
    killed one's orphaned workers may still write, and the last let finish: every file
    (shards, indexes, tokenizer, plan, unit records, manifest with its checksums; none holds a
    time or a worker count) equals an uninterrupted preparation's. A moment is a number of
    units done plus a fraction of a second, so that it lands in the work however loaded the
    machine is; the first is a time into the first run (reading, training the tokenizer)."""
    rng = np.random.default_rng(10)
    words = ["def", "return", "alpha", "beta", "(x):", "é", "日本", "\n", "  ", "+", "1", "self", "for"]
    (tmp_path / "in").mkdir()
    for i in range(1000):  # 8.6 MB: 68 units, 3.5 s here unloaded.
        (tmp_path / "in" / f"{i:04d}.txt").write_text(" ".join(rng.choice(words, rng.integers(200, 3000))))
    args = [sys.executable, "-m", "llmjax.cli.prepare", f"--input={tmp_path / 'in'}", "--vocab_size=1000",
            "--tokenizer_sample_mb=0.5", "--workers=2", "--shard_mb=0.1"]
    reference = subprocess.run(args + [f"--out={tmp_path / 'ref'}"], cwd=ROOT, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    units = len(json.loads((tmp_path / "ref" / "plan.json").read_text())["units"])
    draw = random.Random(20240611)
    moments = [(0, draw.uniform(0.3, 1.0))] + [(u, draw.uniform(0, 0.3)) for u in sorted(draw.sample(range(units), 5))]
    cut, killed, sessions = tmp_path / "cut", [], []
    try:
        for done, seconds in moments:
            state, session = _kill_at(args + [f"--out={cut}"], cut, done, seconds)
            killed.append(state)
            sessions.append(session)
        final = subprocess.run(args + [f"--out={cut}"], cwd=ROOT, capture_output=True, text=True)
    finally:
        for session in sessions:  # Orphaned workers, had they outlived the test.
            try:
                os.killpg(session, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert sum(state.endswith(" units") for state in killed) >= 3, killed  # Killed mid-work, not after.
    assert final.returncode == 0, final.stderr
    assert _digests(cut) == _digests(tmp_path / "ref"), killed
    recorded = json.loads((cut / "manifest.json").read_text())["sha256"]
    assert recorded == {name: digest for name, digest in _digests(cut).items() if name in recorded}
    assert len(recorded) == 1 + 2 * 2 * units


@pytest.mark.parametrize("signum, to_group, code", [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)])
def test_ctrl_c_or_sigterm_stops_with_one_line_and_a_rerun_finishes(tmp_path, signum, to_group, code):
    """Ctrl-C reaches every process of the group, SIGTERM (a scheduler) the main one: either way
    one error line, no worker's traceback, no process left, and the rerun completes the data."""
    rng = np.random.default_rng(11)
    (tmp_path / "in").mkdir()
    for i in range(400):
        (tmp_path / "in" / f"{i:04d}.txt").write_text(" ".join(rng.choice(["def", "x", "(y):", "\n"], 1500)))
    args = [sys.executable, "-m", "llmjax.cli.prepare", f"--input={tmp_path / 'in'}", "--vocab_size=300",
            "--workers=2", "--shard_mb=0.05", f"--out={tmp_path / 'ds'}"]
    # As from a terminal, SIGINT handled: pytest-xdist's workers ignore it, which a child inherits
    # (restored here before exec: a preexec_fn would fork this multithreaded process).
    restore = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    job = subprocess.Popen([sys.executable, "-c", restore, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while job.poll() is None and _units_done(tmp_path / "ds") < 2 and time.time() < deadline:
        time.sleep(0.005)
    (os.killpg if to_group else os.kill)(job.pid, signum)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.count("error: ") == 1, stderr[-2000:]
    assert "error: interrupted; the finished units are kept: rerun the same command to finish." in stderr
    assert not (tmp_path / "ds" / "manifest.json").exists()
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and (tmp_path / "ds" / "manifest.json").exists(), rerun.stderr[-2000:]


def test_an_interrupted_shard_writer_leaves_only_tmp_files(tmp_path, monkeypatch):
    """What a rerun sweeps away before it starts: *.tmp, the index's temporary file too."""
    writer = ShardWriter(tmp_path / "train-00000.bin", 0, np.uint16)
    writer.append([5, 6, 7])

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "rename", killed)  # Killed as the shard is about to appear.
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 2 and all(name.endswith(".tmp") for name in left), left


def test_a_unit_written_twice_at_once_is_whole(tmp_path):
    """A killed preparation's orphaned worker may still be writing a unit when the rerun's
    worker starts on it: the one that finishes must not take the other's partial file."""
    path = tmp_path / "train-00000.bin"
    orphan = ShardWriter(path, 0, np.uint16)
    orphan.append([5, 6, 7])
    orphan.append([8])
    rerun = ShardWriter(path, 0, np.uint16)
    rerun.append([5, 6, 7])
    orphan.close()  # ... and the rerun is killed before it closes.
    np.testing.assert_array_equal(np.fromfile(path, np.uint16), [5, 6, 7, 0, 8, 0])
    np.testing.assert_array_equal(np.load(index_path(path)), [4, 6])


def test_a_given_tokenizer_interrupted_while_saved_is_saved_whole_on_resume(tmp_path, tokenizer_file):
    """Saving a given tokenizer writes the file, then its special ids beside it: a rerun after
    a kill between the two writes both, as an uninterrupted preparation does."""
    _raw_text(tmp_path / "src")
    options = PrepareOptions(inputs=(str(tmp_path / "src"),), tokenizer=str(tokenizer_file), eos_id=1, workers=1)
    reference = prepare(options, tmp_path / "ref", **QUIET)
    (tmp_path / "cut").mkdir()
    for name in ("plan.json", "tokenizer.json"):  # What the kill left.
        (tmp_path / "cut" / name).write_bytes((reference / name).read_bytes())
    assert _digests(prepare(options, tmp_path / "cut", **QUIET)) == _digests(reference)


def test_empty_files_and_invalid_utf8_are_counted_not_fatal(tmp_path):
    (tmp_path / "in").mkdir()
    for i, d in enumerate(_documents(10, seed=6)):
        (tmp_path / "in" / f"{i}.txt").write_text(d)
    (tmp_path / "in" / "empty.txt").write_text("")
    (tmp_path / "in" / "blank.txt").write_text("  \n\n")
    (tmp_path / "in" / "bad.txt").write_bytes(b"ok \xff\xfe bytes")
    logs = []
    out = prepare(PrepareOptions(inputs=(str(tmp_path / "in"),), vocab_size=280, val_percent=0, workers=1),
                  tmp_path / "ds", log=logs.append, progress=False)
    stats = json.loads((out / "manifest.json").read_text())["read_stats"]
    assert stats == {**stats, "documents": 13, "empty_documents": 2, "invalid_utf8_documents": 1}
    assert any("skipped 2 empty documents" in line and "1 documents" in line for line in logs)
    assert open_dataset(out).manifest["splits"]["train"]["documents"] == 11


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "llmjax.cli.prepare", *args], cwd=ROOT, capture_output=True,
                          text=True)


def test_objective_flags_train_the_tokens_bert_and_t5_need(tmp_path, tokenizer_file):
    """A dataset for MLM and span corruption: its tokenizer has the mask and the 100 sentinels,
    which the objectives find; without them the error names the flag that adds them."""
    (tmp_path / "in").mkdir()
    for i, d in enumerate(_documents(20, seed=8)):
        (tmp_path / "in" / f"{i}.txt").write_text(d)
    result = _cli(f"--input={tmp_path / 'in'}", f"--out={tmp_path / 'ds'}", "--vocab_size=500", "--workers=1",
                  "--val_percent=20", "--objective=mlm", "--objective=span")
    assert result.returncode == 0, result.stderr[-2000:]
    tokenizer = open_dataset(tmp_path / "ds").tokenizer
    for family, name in (("bert", "mlm"), ("t5", "span")):
        ids = objectives.get(name).impl().token_ids(tokenizer, default_config(family))
        assert ids, name
    plain = TextTokenizer(tokenizer_file)
    with pytest.raises(DataError, match="prepare the dataset with llmjax-prepare --objective mlm"):
        objectives.get("mlm").impl().token_ids(plain, default_config("bert"))
    both = _cli(f"--input={tmp_path / 'in'}", f"--out={tmp_path / 'x'}", f"--tokenizer={tokenizer_file}",
                "--objective=mlm")
    assert both.returncode == 1 and "with --tokenizer the given one is used as it is" in both.stderr


def test_bad_input_fails_with_one_clear_line(tmp_path, tokenizer_file):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text here"}\n')
    result = _cli(f"--input={tmp_path / 'a.jsonl'}", f"--out={tmp_path / 'o1'}",
                  f"--tokenizer={tokenizer_file}")
    assert result.returncode != 0
    assert f"{tmp_path / 'a.jsonl'}:2: no text field 'text'" in result.stderr
    assert "--text_field" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o1" / "manifest.json").exists()

    result = _cli(f"--input={tmp_path / 'missing'}", f"--out={tmp_path / 'o2'}")
    assert result.returncode != 0 and "neither a file, a directory nor a glob" in result.stderr
    assert not (tmp_path / "o2").exists()

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = _cli(f"--input={tmp_path / 'a.jsonl'}", f"--out={tmp_path / 'busy'}")
    assert result.returncode != 0 and "not an llmjax dataset" in result.stderr
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]

    result = _cli(f"--input={tmp_path / 'a.jsonl'}", f"--out={tmp_path / 'o3'}", "--tokenizer=/nope/tokenizer.json")
    assert result.returncode != 0 and "tokenizer file /nope/tokenizer.json does not exist" in result.stderr


def test_output_holding_another_dataset_is_refused(tmp_path, tokenizer_file):
    for name, docs in (("x", _documents(5, seed=7)), ("y", _documents(5, seed=8))):
        (tmp_path / name).mkdir()
        for i, d in enumerate(docs):
            (tmp_path / name / f"{i}.txt").write_text(d)
    options = dict(tokenizer=str(tokenizer_file), val_percent=0, workers=1)
    out = prepare(PrepareOptions(inputs=(str(tmp_path / "x"),), **options), tmp_path / "ds", **QUIET)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match="already holds a different dataset .*files.*choose another --out"):
        prepare(PrepareOptions(inputs=(str(tmp_path / "y"),), **options), out, **QUIET)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _raw_text(root, count=12):
    root.mkdir()
    for i, d in enumerate(_documents(count, seed=9)):
        (root / f"{i}.txt").write_text(d)


def test_a_given_tokenizer_prepares_raw_text_as_it_is(tmp_path, tokenizer_file):
    """data.tokenizer (e.g. an imported model's): nothing is trained; documents end at data.eos_id."""
    _raw_text(tmp_path / "src")
    config = default_config().data
    config.update(source=str(tmp_path / "src"), glob="*.txt", tokenizer=str(tokenizer_file), eos_id=1)
    logs = []
    [(dataset, _)] = resolve(config, 300, tmp_path / "cache", logs.append)
    assert not any("training" in line for line in logs)
    assert dataset.eos_id == 1 and dataset.fingerprint == TextTokenizer(tokenizer_file, 1).fingerprint
    assert dataset.fingerprint != TextTokenizer(tokenizer_file).fingerprint  # The ids are in it.
    stream = np.asarray(dataset.stream("train"))
    assert int((stream == 1).sum()) == dataset.manifest["splits"]["train"]["documents"]
    config.eos_id = 2  # Another end-of-document id is another dataset.
    assert resolve(config, 300, tmp_path / "cache", logs.append)[0][0].directory != dataset.directory


def test_a_run_refuses_its_tokenizer_file_with_another_end_of_document_id(tmp_path, tokenizer_file):
    """The fingerprint covers the special ids: the same file, documents ending elsewhere, is
    another tokenizer; a run's saved tokenizer keeps the ids it was trained with."""
    by_name = TextTokenizer(tokenizer_file)
    other = 1 if by_name.eos_id != 1 else 2
    (tmp_path / "run").mkdir()
    TextTokenizer(tokenizer_file, other).save(tmp_path / "run")
    check_tokenizer(tmp_path / "run", TextTokenizer(tokenizer_file, other))
    with pytest.raises(DataError, match=f"end of document {by_name.eos_id}.* end of document {other}.*"
                                        f"--eos_id {other}"):
        check_tokenizer(tmp_path / "run", by_name)


@pytest.mark.parametrize("tokenizer, eos_id, vocab_size, message", [
    ("missing.json", -1, 300, "tokenizer file .*missing.json does not exist"),
    ("tokenizer.json", -1, 100, "model.vocab_size=100 is smaller than the data's tokenizer"),
    ("tokenizer.json", 999, 300, "end-of-document id 999 is outside tokenizer"),
])
def test_a_bad_given_tokenizer_is_refused_before_any_work(tmp_path, tokenizer_file, tokenizer, eos_id,
                                                          vocab_size, message):
    _raw_text(tmp_path / "src")
    (tmp_path / "tokenizer.json").write_bytes(tokenizer_file.read_bytes())
    config = default_config().data
    config.update(source=str(tmp_path / "src"), glob="*.txt", tokenizer=str(tmp_path / tokenizer), eos_id=eos_id)
    with pytest.raises(DataError, match=message):
        resolve(config, vocab_size, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def _flip_byte(path, offset=0):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _prepared(tmp_path, tokenizer_file, name="ds"):
    _raw_text(tmp_path / "src", count=30)
    return prepare(PrepareOptions(inputs=(str(tmp_path / "src"),), tokenizer=str(tokenizer_file), val_percent=20,
                                  workers=1, shard_mb=0.002), tmp_path / name, **QUIET)


def test_manifest_records_the_sha256_of_every_file_a_reader_opens(tmp_path, tokenizer_file):
    out = _prepared(tmp_path, tokenizer_file)
    read = sorted(p.name for p in out.iterdir() if p.name.endswith((".bin", ".idx.npy")) or p.name == "tokenizer.json")
    assert len(read) > 5  # Several units: train and val shards, each with its index.
    recorded = json.loads((out / "manifest.json").read_text())["sha256"]
    assert recorded == {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in read}


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-1])


@pytest.mark.parametrize("pattern, change, message", [
    ("train-*.bin", _flip_byte, "has changed since the dataset was prepared"),
    ("val-*.bin.idx.npy", _flip_byte, "has changed since the dataset was prepared"),
    ("train-*.bin.idx.npy", _truncate, "has changed since the dataset was prepared"),
    ("val-*.bin", lambda p: p.unlink(), "is missing from the prepared dataset"),
    ("tokenizer.json", lambda p: _flip_byte(p, 10), "has changed since the dataset was prepared"),
])
def test_a_prepared_dataset_changed_on_disk_is_refused_naming_the_file(tmp_path, tokenizer_file, pattern,
                                                                       change, message):
    out = _prepared(tmp_path, tokenizer_file)
    config = default_config().data
    config.update(source=str(out))
    logs = []
    [(dataset, _)] = resolve(config, 300, tmp_path / "cache", log=logs.append)  # Untouched: it opens.
    assert "unverified" not in logs[-1]
    assert np.asarray(dataset.stream("train")).size == dataset.manifest["splits"]["train"]["tokens"]
    victim = max((p for p in out.glob(pattern) if p.stat().st_size), key=lambda p: p.name)
    size = victim.stat().st_size
    change(victim)
    assert not victim.exists() or victim.stat().st_size in (size, size - 1)
    with pytest.raises(DataError, match=re.escape(str(victim)) + f" {message}.*delete "
                                        + re.escape(str(out)) + " and prepare it again"):
        resolve(config, 300, tmp_path / "cache", log=lambda *_: None)


def test_a_cached_dataset_changed_on_disk_is_refused(tmp_path, tokenizer_file):
    """Raw text (the stdlib corpus too) is prepared into the cache once; later runs open that
    copy, so it is checked as any prepared dataset is."""
    _raw_text(tmp_path / "src")
    config = default_config().data
    config.update(source=str(tmp_path / "src"), glob="*.txt", tokenizer=str(tokenizer_file))
    [(dataset, _)] = resolve(config, 300, tmp_path / "cache", log=lambda *_: None)
    shard = dataset.directory / dataset.manifest["splits"]["train"]["shards"][0]["file"]
    _flip_byte(shard, shard.stat().st_size // 2)
    with pytest.raises(DataError, match=re.escape(str(shard)) + " has changed"):
        resolve(config, 300, tmp_path / "cache", log=lambda *_: None)


def test_a_manifest_from_before_checksums_still_opens(tmp_path, tokenizer_file):
    out = _prepared(tmp_path, tokenizer_file)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["sha256"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    _flip_byte(next(out.glob("train-*.bin")))  # Nothing recorded, so nothing to find, and it says so.
    config = default_config().data
    config.update(source=str(out))
    logs = []
    [(dataset, _)] = resolve(config, 300, tmp_path / "cache", log=logs.append)
    assert dataset.manifest["splits"] == manifest["splits"]
    assert logs[-1].endswith(f"in {out} (unverified: prepared before llmjax recorded checksums)")


def test_token_counts_read_in_chunks_equal_one_bincount(tmp_path):
    ids = np.random.default_rng(0).integers(0, 50, 1001).astype(np.uint16)
    ids.tofile(tmp_path / "shard.bin")
    counts = token_counts(tmp_path / "shard.bin", np.uint16, 64, chunk=7)
    np.testing.assert_array_equal(counts, np.bincount(ids, minlength=64))


def test_line_parts_cover_a_jsonl_file_in_whole_lines_numbered_from_its_start(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"".join(json.dumps({"text": d}).encode() + b"\n" for d in _documents(20, seed=4))
                     + b'{"text": "no newline at the end"}')
    data = path.read_bytes()
    file = sources.find_inputs([str(path)], "**/*")[0]
    parts = sources.line_parts(file, 300)
    assert len(parts) > 3 and parts[0][0] == 0 and parts[-1][1] == len(data)
    for (start, end, first), following in zip(parts, parts[1:] + [(len(data), None, None)]):
        assert end == following[0] and data[end - 1:end] in (b"\n", b"}")  # Consecutive, whole lines.
        assert first == 1 + data[:start].count(b"\n")


def test_a_large_jsonl_file_is_cut_into_parts_and_gives_the_dataset_read_whole(tmp_path, tokenizer_file):
    docs = _documents(60, seed=5)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    options = dict(inputs=(str(tmp_path / "in"),), tokenizer=str(tokenizer_file), val_percent=20)
    whole = prepare(PrepareOptions(**options, workers=1), tmp_path / "whole", **QUIET)
    cut = prepare(PrepareOptions(**options, workers=2, shard_mb=0.002), tmp_path / "cut", **QUIET)
    units = json.loads((cut / "plan.json").read_text())["units"]
    assert len(units) > 4 and all(isinstance(piece, list) for unit in units for piece in unit)
    assert json.loads((cut / "manifest.json").read_text())["sources"] == ["big.jsonl"]
    for split in ("train", "val"):  # Documents keep their ids (path:line), hence their split.
        assert _stream(whole, split).size
        np.testing.assert_array_equal(_stream(whole, split), _stream(cut, split))


def test_tokenizer_training_sees_no_run_longer_than_its_limit():
    """One giant run (a minified line, a blob) is cut into pieces before the BPE trainer, whose
    time grows with the square of a pre-token's length; ordinary text passes unchanged."""
    text = "def f(x): " + "x" * 40_000 + " then " + "\n" * 20_000 + "tail"
    pieces = list(bounded_runs([text, "ordinary text", ""], limit=16_384))
    assert "".join(pieces) == text + "ordinary text" and pieces[-2:] == ["ordinary text", ""]
    assert max(len(run) for piece in pieces for run in re.findall(r"\S+|\s+", piece)) <= 16_384
    corpus = [" ".join(_documents(5, seed=9))]
    assert list(bounded_runs(corpus)) == corpus


def test_a_corpus_of_one_text_file_holds_out_its_tail(tmp_path, monkeypatch):
    """tiny-shakespeare's input.txt: one document, which no hash can put on both sides, holds out
    its last val_percent of bytes from a line boundary on; the tokenizer is not trained on it.
    llmjax-train's own preparation of a directory holding it gets validation tokens too."""
    (tmp_path / "src").mkdir()
    lines = [f"{d.replace(chr(10), ' ')}\n" for d in _documents(200, seed=11)]
    data = "".join(lines).encode()
    (tmp_path / "src" / "input.txt").write_bytes(data)
    import llmjax.data.prepare as prepare_module  # noqa: PLC0415
    seen, train = [], prepare_module.train_tokenizer
    monkeypatch.setattr(prepare_module, "train_tokenizer", lambda texts, *a: train(seen.extend(texts) or seen, *a))
    out = prepare(PrepareOptions(inputs=(str(tmp_path / "src" / "input.txt"),), vocab_size=300, val_percent=10,
                                 workers=1), tmp_path / "ds", **QUIET)
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    assert (splits["train"]["documents"], splits["val"]["documents"]) == (1, 1)
    head, tail = data[:splits["train"]["bytes"]], data[splits["train"]["bytes"]:]
    assert head.endswith(b"\n") and len(tail) == splits["val"]["bytes"]  # Cut at a line boundary,
    assert len(data) * 0.1 <= len(tail) < len(data) * 0.1 + max(map(len, lines))  # from the byte 10% from the end.
    assert open_dataset(out).tokenizer.decode(_stream(out, "val")[:-1].tolist()) == tail.decode()
    assert [text.encode() for text in seen] == [head]
    config = default_config().data
    config.update(source=str(tmp_path / "src"), glob="*", val_percent=2)
    [(dataset, _)] = resolve(config, 300, tmp_path / "cache", lambda *_: None)
    assert dataset.tokens["val"] > 0 and dataset.manifest["splits"]["val"]["documents"] == 1
    (tmp_path / "line.txt").write_text("one line, no boundary to cut its tail at " * 20)
    with pytest.raises(DataError, match=r"no training documents .*; break .*line.txt into lines .*, or add documents"):
        prepare(PrepareOptions(inputs=(str(tmp_path / "line.txt"),), vocab_size=300, workers=1), tmp_path / "l", **QUIET)


def test_a_dataset_left_without_a_split_is_refused_naming_a_val_percent_that_gives_both(tmp_path):
    """Two JSONL lines, both hashed to train at 2%: refused before --out is left holding a dataset
    that training cannot evaluate on, and the value the error names works; the same for none left
    to train on, and for llmjax-train's own preparation, whose data.val_percent is a whole number."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jsonl").write_text('{"text": "a"}\n{"text": "b"}')
    options = dict(inputs=(str(tmp_path / "src" / "a.jsonl"),), vocab_size=300, workers=1)
    for val_percent, word, split in ((2, "raise", "validation"), (95, "lower", "training")):
        with pytest.raises(DataError, match=fr"no {split} documents \(.*--val_percent {val_percent}\); {word} "
                                            r"--val_percent to at \w+ [\d.]+ \(data.val_percent=\d+") as error:
            prepare(PrepareOptions(**options, val_percent=val_percent), tmp_path / "ds", **QUIET)
        assert not (tmp_path / "ds").exists()
        given, whole = re.search(r"([\d.]+) \(data.val_percent=(\d+)", str(error.value)).groups()
        out = prepare(PrepareOptions(**options, val_percent=float(given)), tmp_path / f"ds{given}", **QUIET)
        assert all(v["documents"] == 1 for v in json.loads((out / "manifest.json").read_text())["splits"].values())
        config = default_config().data
        config.update(source=str(tmp_path / "src"), glob="*", val_percent=val_percent)
        cached = lambda: {p for p in (tmp_path / "cache").glob("*") if p.is_dir()}  # noqa: E731
        before = cached()
        with pytest.raises(DataError, match=f"data.val_percent={whole} for llmjax-train"):
            resolve(config, 300, tmp_path / "cache", lambda *_: None)
        assert cached() == before  # Nothing half-made left in the cache.
        config.val_percent = int(whole)
        [(dataset, _)] = resolve(config, 300, tmp_path / "cache", lambda *_: None)
        assert dataset.tokens["train"] and dataset.tokens["val"]


def test_a_parquet_text_column_that_is_not_strings_is_refused_naming_it(tmp_path):
    """As JSONL names a field that is not a string: one error naming file, column and type, and
    --out left as it was, so the corrected command is not refused as another dataset."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415
    path = tmp_path / "two.parquet"
    for column, kind in (([1, 2, 3], "int64"), ([b"a", b"b", b"c"], "binary")):
        pq.write_table(pa.table({"text": column, "body": ["a doc", "b doc", "c doc"]}), path)
        options = dict(inputs=(str(path),), vocab_size=300, val_percent=50, workers=1)
        with pytest.raises(DataError, match=f"^{re.escape(str(path))}: column 'text' is {kind}, not a string; "
                                            f".*--text_field"):
            prepare(PrepareOptions(**options), tmp_path / "ds", **QUIET)
        assert not (tmp_path / "ds").exists()
    assert open_dataset(prepare(PrepareOptions(**options, text_field="body"), tmp_path / "ds", **QUIET)).tokens["val"]


@pytest.mark.parametrize("error, kept", [(RuntimeError("a bug bad input ran into"), False),
                                         (OSError(28, "No space left on device"), True),
                                         (KeyboardInterrupt(), True)])
def test_a_failed_preparation_leaves_out_as_found_unless_a_rerun_can_resume_it(tmp_path, monkeypatch, error, kept):
    """Whatever fails a preparation this call started because of its input leaves --out as it
    was (absent, or the empty directory given); a full disk or an interruption keeps the
    finished units, and the same command then finishes."""
    import llmjax.data.prepare as prepare_module  # noqa: PLC0415
    _raw_text(tmp_path / "src")
    (tmp_path / "ds").mkdir()
    options = PrepareOptions(inputs=(str(tmp_path / "src"),), vocab_size=300, val_percent=20, workers=1)
    manifest = prepare_module._manifest

    def fail(*args):
        raise error
    monkeypatch.setattr(prepare_module, "_manifest", fail)  # Every unit is done by then.
    with pytest.raises(type(error)):
        prepare(options, tmp_path / "ds", **QUIET)
    left = sorted(p.name for p in (tmp_path / "ds").iterdir())
    assert ("plan.json" in left and "unit-00000.json" in left) if kept else left == []
    monkeypatch.setattr(prepare_module, "_manifest", manifest)
    logs = []
    prepare(options, tmp_path / "ds", log=logs.append, progress=False)
    assert any("resuming" in line for line in logs) == kept


def test_a_file_name_that_is_not_utf8_is_prepared_and_hashed_by_its_bytes(tmp_path):
    """caf\\xe9.txt in Latin-1 (Python's name for it holds a surrogate escape) is read, split by
    the hash of its name's own bytes and recorded in the plan and manifest, which read back to
    it; a UTF-8 name hashes as it always did, so no document moves across the split."""
    (tmp_path / "src").mkdir()
    latin1 = os.fsdecode(b"caf\xe9.txt")
    (tmp_path / "src" / latin1).write_text("latin1 named file " * 40)
    (tmp_path / "src" / "ok.txt").write_text("normal file " * 40)
    options, logs = PrepareOptions(inputs=(str(tmp_path / "src"),), vocab_size=300, workers=1), []
    out = prepare(options, tmp_path / "ds", **QUIET)
    prepare(options, out, log=logs.append, progress=False)  # The plan's identity reads back equal.
    assert logs == [f"prepare: {out} already holds this dataset; nothing to do."]
    bucket = lambda name: int(hashlib.sha1(name).hexdigest(), 16) % 10_000  # noqa: E731
    assert sources.bucket(latin1) == bucket(b"caf\xe9.txt") and sources.bucket("café.txt") == bucket("café.txt".encode())
    for name in ("plan.json", "manifest.json"):
        assert (out / name).read_bytes().isascii()
    assert json.loads((out / "manifest.json").read_text())["sources"] == [latin1, "ok.txt"]
    config = default_config().data
    config.update(source=str(tmp_path / "src"), glob="*")
    [(dataset, _)] = resolve(config, 300, tmp_path / "cache", lambda *_: None)  # llmjax-train's preparation.
    assert dataset.tokens["train"] and dataset.tokens["val"]


def test_an_out_where_an_input_glob_matches_files_is_refused(tmp_path, monkeypatch):
    """As an --out inside an input directory is: with --input 'g/**/*' --out g/prep, a rerun to
    finish an interrupted preparation would read the dataset's own files. An --out the glob
    cannot reach (another suffix, a hidden directory) is taken, and the check agrees with glob."""
    import glob  # noqa: PLC0415
    monkeypatch.chdir(tmp_path)
    _raw_text(tmp_path / "g")
    (tmp_path / "g" / "sub").mkdir()
    (tmp_path / "g" / "sub" / "x.txt").write_text("in a subdirectory")
    options = dict(vocab_size=300, val_percent=20, workers=1)
    for pattern in ("g/**/*", "g/*/*", "g/**/*.json", f"{tmp_path}/g/p*/*"):
        with pytest.raises(DataError, match=f"--out g/prep is inside what the input pattern '{re.escape(pattern)}' matches"):
            prepare(PrepareOptions(inputs=(pattern,), **options), Path("g/prep"), **QUIET)
        assert not (tmp_path / "g" / "prep").exists()
    for pattern, out in (("g/**/*", "g/.prep"), ("g/*.txt", "g/prep1"), ("g/**/*.txt", "g/prep2"), ("g/*", "g/prep3")):
        prepare(PrepareOptions(inputs=(pattern,), **options), Path(out), **QUIET)
        for name in os.listdir(out):  # Nothing there that the glob finds, as the check said.
            assert not sources.glob_matches(pattern, Path(out) / name)
            assert str(Path(out) / name) not in glob.glob(pattern, recursive=True)
        assert sources.glob_matches(pattern, Path("g/0.txt")) == ("g/0.txt" in glob.glob(pattern, recursive=True))


def test_a_jsonl_file_starting_with_a_utf8_bom_is_read(tmp_path):
    """The BOM an editor wrote is skipped at the start of a JSONL file (gzip'd too) and nowhere
    else; a text file is read as it is, BOM and all."""
    lines = b'{"text": "first"}\n{"text": "second"}\n'
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + lines)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + lines))
    for name in ("a.jsonl", "b.jsonl.gz"):
        file = sources.find_inputs([str(tmp_path / name)])[0]
        assert list(sources.read_documents(file, "text", sources.ReadStats())) == [
            (f"{name}:1", "first"), (f"{name}:2", "second")]
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbfplain")
    file = sources.find_inputs([str(tmp_path / "c.txt")])[0]
    assert list(sources.read_documents(file, "text", sources.ReadStats())) == [("c.txt", "\ufeffplain")]
    (tmp_path / "d.jsonl").write_bytes(lines + b"\xef\xbb\xbf" + lines)  # Not at the start: still an error.
    with pytest.raises(DataError, match=r"d.jsonl:3: not valid JSON"):
        list(sources.read_documents(sources.find_inputs([str(tmp_path / "d.jsonl")])[0], "text", sources.ReadStats()))


def test_workers_ignore_ctrl_c_from_their_start(tmp_path):
    """Spawned workers run their initializer only after importing llmjax (seconds on a loaded
    machine): a Ctrl-C to the group before it printed a worker's traceback. Started in
    `_workers_ignore_interrupts`, they ignore it from exec on, and the parent's own handler is
    back after the block. (A fresh process: pytest-xdist's workers ignore SIGINT.)"""
    script = tmp_path / "pool.py"
    script.write_text(
        "import multiprocessing, signal\n"
        "from llmjax.data import prepare\n"
        "def ignores(_):\n"
        "    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN\n"
        "if __name__ == '__main__':\n"
        "    spawn = multiprocessing.get_context('spawn')\n"
        "    with prepare._workers_ignore_interrupts():\n"
        "        pool = spawn.Pool(1)\n"
        "    with pool, spawn.Pool(1) as plain:\n"
        "        print(pool.map(ignores, [0]), plain.map(ignores, [0]), signal.getsignal(signal.SIGINT).__name__)\n")
    restore = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    result = subprocess.run([sys.executable, "-c", restore, sys.executable, str(script)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[True] [False] default_int_handler", result.stdout + result.stderr
