"""Packing, data order and corpus preparation, checked against direct reference computations."""

import json

import numpy as np
import pytest

from llmjax.config import default_config
from llmjax.data import corpus
from llmjax.data.pipeline import PackedWindows, eval_batches, train_batches
from llmjax.data.prepare import prepare_corpus, unigram_entropy
from llmjax.data.tokenizer import train_tokenizer

EOS = 2


def _stream(seed=0, docs=40):
    rng = np.random.default_rng(seed)
    parts = [np.append(rng.integers(3, 50, rng.integers(1, 30)), EOS) for _ in range(docs)]
    return np.concatenate(parts).astype(np.uint16)


def test_windows_cover_the_stream_exactly_once():
    tokens = _stream()
    windows = PackedWindows(tokens, 16, EOS)
    n = len(windows)
    assert n == (tokens.size - 1) // 16
    inputs = np.concatenate([windows[i]["inputs"] for i in range(n)])
    targets = np.concatenate([windows[i]["targets"] for i in range(n)])
    np.testing.assert_array_equal(inputs, tokens[:n * 16])
    np.testing.assert_array_equal(targets, tokens[1:n * 16 + 1])


def test_segment_ids_positions_and_weights_follow_eos():
    tokens = _stream(seed=1)
    windows = PackedWindows(tokens, 32, EOS)
    for i in range(len(windows)):
        w = windows[i]
        segment, position = 0, 0
        for t, token in enumerate(w["inputs"]):
            assert w["segment_ids"][t] == segment and w["positions"][t] == position
            assert w["weights"][t] == (0.0 if token == EOS else 1.0)
            if token == EOS:
                segment, position = segment + 1, 0
            else:
                position += 1


def test_batches_are_a_seeded_function_of_the_step():
    tokens = _stream(seed=2, docs=200)
    n = len(PackedWindows(tokens, 8, EOS))
    a, b = train_batches(tokens, 8, EOS, 4, seed=0), train_batches(tokens, 8, EOS, 4, seed=0)
    other = train_batches(tokens, 8, EOS, 4, seed=1)
    for step in (0, 3, 17, 1000):
        for key in a[step]:
            np.testing.assert_array_equal(a[step][key], b[step][key])
    assert not np.array_equal(a[0]["index"], other[0]["index"])
    # One epoch visits every window exactly once, in an order that is not the identity.
    steps_per_epoch = n // 4
    seen = np.concatenate([a[s]["index"] for s in range(steps_per_epoch)])
    assert len(set(seen.tolist())) == len(seen)
    assert not np.array_equal(seen, np.arange(len(seen)))
    # Batches hold exactly the windows they claim.
    windows = PackedWindows(tokens, 8, EOS)
    for row, index in enumerate(a[5]["index"]):
        np.testing.assert_array_equal(a[5]["inputs"][row], windows[int(index)]["inputs"])


def test_eval_batches_are_fixed_and_in_order():
    tokens = _stream(seed=3)
    batches = eval_batches(tokens, 8, EOS, batch_size=2, max_batches=3)
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="raise data.val_percent"):
        eval_batches(tokens[:20], 8, EOS, batch_size=4, max_batches=3)


def test_split_is_deterministic_disjoint_and_never_empty():
    paths = [f"pkg/mod{i}.py" for i in range(200)]
    train, val = corpus.split_documents(paths, 5)
    assert corpus.split_documents(list(paths), 5) == (train, val)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(paths)
    assert 0 < len(val) < 30
    assert corpus.split_documents(paths[:3], 0)[1], "at least one validation file"
    assert corpus.split_documents(paths[:2], 99.9)[0], "at least one training file"


def test_unigram_entropy_matches_definition():
    tokens = np.array([0, 0, 1, 2])
    assert unigram_entropy(tokens, 4) == pytest.approx(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)))


def _write_corpus(root, files=12):
    root.mkdir()
    for i in range(files):
        (root / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + 'é'\n" * (5 + i))
    (root / "bad.py").write_bytes(b"x = '\xff\xfe'\n")
    (root / "sub").mkdir()
    (root / "sub" / "site-packages").mkdir()
    (root / "sub" / "site-packages" / "ignored.py").write_text("ignored = True\n")


def test_prepare_builds_a_cache_once(tmp_path):
    _write_corpus(tmp_path / "src")
    config = default_config().data
    config.update(source=str(tmp_path / "src"), cache_dir=str(tmp_path / "cache"), val_percent=10)
    logs = []
    prepared = prepare_corpus(config, 300, logs.append)
    manifest = prepared.manifest
    assert manifest["train_files"] + manifest["val_files"] == 13  # site-packages excluded
    assert manifest["invalid_utf8_files"] == ["bad.py"]
    assert manifest["train_tokens"] == prepared.train_tokens.size
    assert int((prepared.train_tokens == prepared.eos_id).sum()) == manifest["train_files"]
    text = "def f3(x):\n    return x * 3 + 'é'\n"
    assert prepared.tokenizer.decode(prepared.tokenizer.encode(text).ids) == text
    assert any("training a 300-token" in line for line in logs)
    # A second call reads the cache instead of rebuilding.
    logs.clear()
    again = prepare_corpus(config, 300, logs.append)
    assert again.directory == prepared.directory
    assert not any("training" in line for line in logs)
    assert json.loads((prepared.directory / "manifest.json").read_text()) == manifest
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [prepared.directory.name]


def test_corpus_errors_are_clear(tmp_path):
    with pytest.raises(corpus.CorpusError, match="not a directory"):
        corpus.corpus_root(str(tmp_path / "missing"))
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.py").write_text("a = 1\n")
    with pytest.raises(corpus.CorpusError, match="at least 2 are needed"):
        corpus.list_documents(tmp_path / "one", "**/*.py", 0)


def test_stdlib_corpus_is_found():
    root = corpus.corpus_root("stdlib")
    assert (root / "os.py").is_file()
    files = corpus.list_documents(root, "json/*.py", 0)
    assert "json/decoder.py" in files


def test_device_batches_equal_the_host_global_batches():
    import jax  # noqa: PLC0415
    from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: PLC0415

    from llmjax.data.pipeline import GlobalBatches, train_rows  # noqa: PLC0415

    tokens = _stream(seed=4, docs=200)
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "tensor"))
    batches = GlobalBatches(train_rows(tokens, 8, EOS, seed=0), 8, 8,
                            NamedSharding(mesh, PartitionSpec("data", None)))
    assert batches.local_rows == list(range(8))  # One process holds every device here.
    reference = train_batches(tokens, 8, EOS, 8, seed=0)
    for step in (0, 7, 40):
        on_device = batches.device_batch(step)
        for key, value in on_device.items():
            np.testing.assert_array_equal(np.asarray(value), reference[step][key])
        assert on_device["inputs"].sharding.spec == PartitionSpec("data", None)
    assert np.isnan(np.asarray(batches.device_batch(3, poison=True)["weights"])).all()


def test_a_given_tokenizer_is_used_as_it_is(tmp_path):
    """data.tokenizer (an imported model's): no BPE is trained, documents end at data.eos_id."""
    _write_corpus(tmp_path / "src")
    tokenizer = train_tokenizer(["completely different text " * 10] * 5, 280)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = default_config().data
    config.update(source=str(tmp_path / "src"), cache_dir=str(tmp_path / "cache"),
                  tokenizer=str(tmp_path / "tokenizer.json"), eos_id=1)
    logs = []
    prepared = prepare_corpus(config, 300, logs.append)
    assert not any("training" in line for line in logs)
    assert prepared.eos_id == 1 and prepared.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert int((prepared.train_tokens == 1).sum()) == prepared.manifest["train_files"]
    # Another eos id is another preparation.
    config.eos_id = 2
    assert prepare_corpus(config, 300, logs.append).directory != prepared.directory


@pytest.mark.parametrize("tokenizer, eos_id, vocab_size, message", [
    ("missing.json", -1, 300, "no such file"),
    ("tokenizer.json", -1, 100, r"has \d+ tokens, more than model.vocab_size=100"),
    ("tokenizer.json", 999, 300, "config.data.eos_id=999: the tokenizer has no such token"),
])
def test_a_bad_given_tokenizer_is_refused(tmp_path, tokenizer, eos_id, vocab_size, message):
    _write_corpus(tmp_path / "src")
    train_tokenizer(["some text " * 10] * 5, 280).save(str(tmp_path / "tokenizer.json"))
    config = default_config().data
    config.update(source=str(tmp_path / "src"), cache_dir=str(tmp_path / "cache"),
                  tokenizer=str(tmp_path / tokenizer), eos_id=eos_id)
    with pytest.raises(corpus.CorpusError, match=message):
        prepare_corpus(config, vocab_size)
    assert not (tmp_path / "cache").exists()

