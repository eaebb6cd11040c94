"""The metrics writer: JSONL, TensorBoard, resume de-duplication, and optional W&B."""

import json
import sys
import types

import pytest

from llmjax.config import ConfigError, validate
from llmjax.metrics import MetricsWriter

from conftest import make_tiny_config


def test_jsonl_and_tensorboard_and_resume_dedup(tmp_path):
    writer = MetricsWriter(tmp_path)
    for step in (5, 10, 15):
        writer.write(step, "train", {"loss": float(step)})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "split": "tr')  # A line cut short by a crash.
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    MetricsWriter(tmp_path, resume_step=10).close()  # Resumed from the step-10 checkpoint.
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10]


def test_wandb_is_optional_and_checked_early(monkeypatch):
    config = make_tiny_config()
    validate(config, 8)  # Off by default: no wandb needed.
    config.tracking.wandb = True
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # As if not installed.
    with pytest.raises(ConfigError, match="pip install 'llmjax\\[wandb\\]'"):
        validate(config, 8)


def test_wandb_receives_the_same_records(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = make_tiny_config()
    config.tracking.wandb = True
    (tmp_path / "run").mkdir()
    writer = MetricsWriter(tmp_path / "run", config=config)
    writer.write(7, "val", {"loss": 2.5})
    writer.close()
    assert calls[0][0] == "init" and calls[0][1]["project"] == "llmjax" and calls[0][1]["name"] == "run"
    assert calls[0][1]["resume"] == "allow" and calls[0][1]["config"]["model"]["d_model"] == 32
    assert calls[1] == ("log", {"val/loss": 2.5}, 7) and calls[2] == ("finish",)


def test_a_resumed_run_keeps_the_records_up_to_its_checkpoint_whatever_else_the_file_holds(tmp_path):
    """Records after the checkpoint are recomputed; lines cut short by a crash, or damaged into
    garbage, are dropped rather than stopping the resumed run."""
    lines = [json.dumps({"step": s, "split": "train", "loss": 1.0}) for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_bytes(("\n".join(lines[:4]) + "\n").encode() + b"\xff\xfe garbage\n"
                                             + b"[1, 2]\n" + lines[4][:10].encode())
    MetricsWriter(tmp_path, resume_step=3).close()
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 2, 3]
