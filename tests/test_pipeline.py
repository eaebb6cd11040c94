"""Packing, data order, mixtures and per-process loading, checked against direct computations."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import grain
import numpy as np
import pytest

from conftest import ROOT
from llmjax.config import default_config
from llmjax.data.dataset import open_dataset, resolve
from llmjax.data.pipeline import GlobalBatches, PackedWindows, eval_batches, mixture_rows, shuffle_seed, train_rows
from llmjax.data.prepare import PrepareOptions, prepare

EOS, PAD = 2, 0


def _stream(seed=0, docs=40):
    rng = np.random.default_rng(seed)
    parts = [np.append(rng.integers(3, 50, rng.integers(1, 30)), EOS) for _ in range(docs)]
    return np.concatenate(parts).astype(np.uint16)


def test_an_epoch_of_windows_holds_every_token_exactly_once():
    tokens = _stream()
    windows = PackedWindows(tokens, 16, EOS, PAD)
    n = len(windows)
    assert n == -(-(tokens.size - 1) // 16) and (tokens.size - 1) % 16, "the last window is partial"
    rows = [windows[i] for i in range(n)]
    inputs = np.concatenate([r["inputs"] for r in rows])
    targets = np.concatenate([r["targets"] for r in rows])
    weights = np.concatenate([r["weights"] for r in rows])
    real = tokens.size - 1
    np.testing.assert_array_equal(inputs[:real], tokens[:-1])
    np.testing.assert_array_equal(targets[:real], tokens[1:])
    # The stream's last token has no target: it and the padding after it are never trained on.
    assert inputs[real] == tokens[-1] and (inputs[real + 1:] == PAD).all() and (weights[real:] == 0).all()
    # Every target that is not padding and not the first token of a document is trained on.
    np.testing.assert_array_equal(weights[:real], tokens[:-1] != EOS)


def test_segment_ids_positions_and_weights_follow_eos():
    tokens = _stream(seed=1)
    windows = PackedWindows(tokens, 32, EOS, PAD)
    real_in_last = (tokens.size - 1) - 32 * (len(windows) - 1)
    for i in range(len(windows)):
        w = windows[i]
        segment, position = 0, 0
        for t, token in enumerate(w["inputs"]):
            padding = i == len(windows) - 1 and t >= real_in_last
            if padding and t == real_in_last:
                segment, position = segment + 1, 0  # Padding is a segment of its own.
            assert w["segment_ids"][t] == segment and w["positions"][t] == position, (i, t)
            assert w["weights"][t] == (0.0 if token == EOS or padding else 1.0)
            if token == EOS and not padding:
                segment, position = segment + 1, 0
            else:
                position += 1


def _batches(tokens, seed):
    return train_rows(tokens, 8, EOS, seed).batch(4, drop_remainder=True,
                                                  batch_fn=lambda rows: {k: np.stack([r[k] for r in rows]) for k in rows[0]})


def test_batches_are_a_seeded_function_of_the_step():
    tokens = _stream(seed=2, docs=200)
    n = len(PackedWindows(tokens, 8, EOS))
    a, b, other = _batches(tokens, 0), _batches(tokens, 0), _batches(tokens, 1)
    for step in (0, 3, 17, 1000):
        for key in a[step]:
            np.testing.assert_array_equal(a[step][key], b[step][key])
    assert not np.array_equal(a[0]["index"], other[0]["index"])
    # One epoch visits every window exactly once, in an order that is not the identity.
    rows = train_rows(tokens, 8, EOS, shuffle_seed=0)
    seen = [int(rows[i]["index"]) for i in range(n)]
    assert sorted(seen) == list(range(n)) and seen != list(range(n))
    # Batches hold exactly the windows they claim.
    windows = PackedWindows(tokens, 8, EOS)
    for row, index in enumerate(a[5]["index"]):
        np.testing.assert_array_equal(a[5]["inputs"][row], windows[int(index)]["inputs"])


def test_each_seed_has_its_own_orders_not_a_neighbours_one_epoch_later():
    tokens = _stream(seed=2, docs=200)
    n = len(PackedWindows(tokens, 8, EOS))

    def epochs(seed, count=3):
        rows = train_rows(tokens, 8, EOS, shuffle_seed(seed))
        return [tuple(int(rows[e * n + i]["index"]) for i in range(n)) for e in range(count)]
    orders = [order for seed in range(6) for order in epochs(seed)]
    assert len(set(orders)) == len(orders)  # 6 seeds x 3 epochs, no order twice.
    grains_own = grain.MapDataset.source(PackedWindows(tokens, 8, EOS)).shuffle(seed=0)
    assert epochs(0, 1)[0] == tuple(int(grains_own[i]["index"]) for i in range(n))  # Seed 0's run is unchanged.


def test_eval_batches_are_fixed_and_in_order():
    tokens = _stream(seed=3)
    batches = eval_batches(tokens, 8, EOS, batch_size=2, max_batches=3)
    assert [[int(b[r]["index"]) for r in sorted(b)] for b in batches] == [[0, 1], [2, 3], [4, 5]]
    second_rows = eval_batches(tokens, 8, EOS, batch_size=2, max_batches=3, rows=[1])
    assert [[int(row["index"]) for row in b.values()] for b in second_rows] == [[1], [3], [5]]
    with pytest.raises(ValueError, match="raise data.val_percent"):
        eval_batches(tokens[:20], 8, EOS, batch_size=4, max_batches=3)


class _Stub:
    """The part of a Dataset that mixing reads."""

    def __init__(self, tokens, name):
        self.tokens, self.name, self.eos_id, self.pad_id = tokens, name, EOS, PAD

    def stream(self, split):
        return self.tokens


def test_mixture_proportions_match_the_weights():
    a, b, c = _Stub(_stream(4, 300), "a"), _Stub(_stream(5, 50), "b"), _Stub(_stream(6, 100), "c")
    rows = mixture_rows([(a, 0.5), (b, 0.2), (c, 0.3)], 8, seed=0)
    sources = np.array([int(rows[i]["source"]) for i in range(2000)])
    np.testing.assert_allclose(np.bincount(sources) / sources.size, [0.5, 0.2, 0.3], atol=0.01)
    # A dataset smaller than its share repeats (b has ~1/6 of a's windows); each still
    # serves its own rows, in its own seeded order.
    b_rows = [rows[i] for i in range(2000) if sources[i] == 1]
    b_windows = PackedWindows(b.tokens, 8, EOS, PAD)
    assert len(b_rows) > 2 * len(b_windows)
    for row in b_rows[:20]:
        np.testing.assert_array_equal(row["inputs"], b_windows[int(row["index"])]["inputs"])
    again = mixture_rows([(a, 0.5), (b, 0.2), (c, 0.3)], 8, seed=0)
    assert all(np.array_equal(again[i]["inputs"], rows[i]["inputs"]) for i in (0, 17, 1999))


def _write_text(root: Path, files: int, seed: int):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "(x)", "é", "日本", "\n", "    "]
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"doc{i:03d}.txt").write_text(" ".join(rng.choice(words, rng.integers(20, 400))))


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """Two prepared datasets sharing one tokenizer: text files, and JSONL tokenized with the
    first one's tokenizer."""
    base = tmp_path_factory.mktemp("datasets")
    _write_text(base / "text", 40, seed=0)
    first = prepare(PrepareOptions(inputs=(str(base / "text"),), vocab_size=300, val_percent=10,
                                   workers=1), base / "a", log=lambda *_: None, progress=False)
    rng = np.random.default_rng(1)
    lines = [json.dumps({"text": "gamma delta " * int(rng.integers(5, 60))}) for _ in range(80)]
    (base / "b.jsonl").write_text("\n".join(lines) + "\n")
    second = prepare(PrepareOptions(inputs=(str(base / "b.jsonl"),), tokenizer=str(first / "tokenizer.json"),
                                    val_percent=10, workers=1), base / "b", log=lambda *_: None, progress=False)
    return first, second


def test_mixture_datasets_of_one_folder_name_keep_their_own_metrics(two_datasets, tmp_path):
    """x/web and y/web are told apart by the paths given, so each keeps its validation line."""
    first, second = two_datasets
    shutil.copytree(first, tmp_path / "x" / "web")
    shutil.copytree(second, tmp_path / "y" / "web")
    data = default_config().data
    data.mixture = f"{tmp_path / 'x' / 'web'}:1,{tmp_path / 'y' / 'web'}:1,{first}:1"
    datasets = resolve(data, 300, tmp_path / "cache", log=lambda *_: None)
    assert [d.name for d, _ in datasets] == [str(tmp_path / "x" / "web"), str(tmp_path / "y" / "web"), "a"]


def test_device_batches_equal_the_host_global_batches(two_datasets):
    import jax  # noqa: PLC0415
    from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: PLC0415

    datasets = [(open_dataset(two_datasets[0]), 0.6), (open_dataset(two_datasets[1]), 0.4)]
    rows = mixture_rows(datasets, 16, seed=0)
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "tensor"))
    keys = ("inputs", "targets", "positions", "segment_ids", "weights")
    batches = GlobalBatches(rows, dict.fromkeys(keys, (8, 16)),
                            dict.fromkeys(keys, NamedSharding(mesh, PartitionSpec("data", None))))
    assert batches.local_rows == list(range(8))  # One process holds every device here.
    for step in (0, 7, 40):
        on_device = batches.device_batch(step)
        for key, value in on_device.items():
            np.testing.assert_array_equal(np.asarray(value), np.stack([rows[step * 8 + r][key] for r in range(8)]))
        assert on_device["inputs"].sharding.spec == PartitionSpec("data", None)
    assert np.isnan(np.asarray(batches.device_batch(3, poison=True)["weights"])).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_one_two_and_four_processes_load_exactly_the_single_process_batches(two_datasets, tmp_path):
    mixture = f"{two_datasets[0]}:0.6,{two_datasets[1]}:0.4"
    steps = [0, 1, 13, 250]  # 250 is past the first epoch of both datasets.
    rows = mixture_rows([(open_dataset(two_datasets[0]), 0.6), (open_dataset(two_datasets[1]), 0.4)], 16, seed=0)
    keys = ("inputs", "targets", "positions", "segment_ids", "weights")
    for processes in (1, 2, 4):
        port, outs = _free_port(), [tmp_path / f"{processes}-{p}.npz" for p in range(processes)]
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
        jobs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "batches_worker.py"), str(out), mixture,
                                  ",".join(map(str, steps)), str(processes), str(p), str(port)],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for p, out in enumerate(outs)]
        logs = [job.communicate(timeout=300)[0] for job in jobs]
        assert all(job.returncode == 0 for job in jobs), logs
        saved = [np.load(out) for out in outs]
        # Each process loaded only the rows of its own devices: a 1/N share.
        assert [s["local_rows"].tolist() for s in saved] == \
            [list(range(p * 8 // processes, (p + 1) * 8 // processes)) for p in range(processes)]
        for step in steps:
            for key in keys:
                parts = {int(name.rsplit("/", 1)[1]): s[name] for s in saved for name in s.files
                         if name.startswith(f"{step}/{key}/")}
                assembled = np.concatenate([parts[r] for r in sorted(parts)])
                expected = np.stack([rows[step * 8 + r][key] for r in range(8)])
                np.testing.assert_array_equal(assembled, expected, err_msg=f"{processes} processes, {step}, {key}")
