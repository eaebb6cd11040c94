"""`llmjax-train` end to end, as a user runs it: real subprocesses, real files."""

import json
import re
import socket
import subprocess
import time

import pytest
from absl import flags
from ml_collections import config_flags

from llmjax.cli.app import config_overrides

from conftest import ROOT, run_train, train_command, train_env, untouched

@pytest.mark.slow
def test_train_command_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    result = run_train(workdir, "--config.train.steps=30", "--config.train.eval_every=15",
                       cache=tmp_path / "cache", devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "parameters: " in out and "vocab_size: 512" in out and "steps: 30" in out
    progress = [line for line in out.splitlines() if line.startswith("step") and "| loss" in line]
    assert len(progress) == 6
    for field in ("loss", "lr", "grad_norm", "tok/s", "MFU", "ETA"):
        assert field in progress[0]
    assert "mesh: {'data': 2, 'fsdp': 1, 'expert': 1, 'sequence': 1, 'tensor': 1}" in out
    assert "attention on cpu: causal: blockwise (model.attention_impl=auto)" in out
    assert "val loss" in out and "unigram entropy" in out

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in val] == [15, 30]
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    assert all(r["tokens_per_sec"] > 0 and 0 < r["mfu"] < 1 for r in train)
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["steps"] == 30 and config["model"]["vocab_size"] == 512
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_val_loss"] == pytest.approx(val[-1]["loss"])

    other_model = run_train(workdir, "--config.model.num_layers=3", cache=tmp_path / "cache")
    assert other_model.returncode == 2
    assert "holds a run with a different model/data/seed/batch size (model.num_layers: 2 -> 3)" in other_model.stderr
    # Another batch size would skip or repeat data (the position is counted in batches): refused.
    other_batch = run_train(workdir, "--config.train.steps=30", "--config.train.global_batch_size=16",
                            cache=tmp_path / "cache", devices=2)
    assert other_batch.returncode == 2 and "(train.global_batch_size: 8 -> 16)" in other_batch.stderr, \
        other_batch.stderr[-2000:]
    # How the same model is computed may change: a run short of memory resumes rematerialised.
    remat = run_train(workdir, "--config.train.steps=32", "--config.train.eval_every=15", "--config.model.remat=full",
                      cache=tmp_path / "cache", devices=2)
    assert remat.returncode == 0 and "resuming from checkpoint step 30" in remat.stdout, remat.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (["--config.model.num_kv_heads=3"], "config.model.num_kv_heads=3: must divide model.num_heads=4"),
    (["--config.mesh.ici.data=2"], "uses 2 devices but 1 are present"),
    (["--config.train.global_batch_size=6", "--config.train.microbatches=4"], "microbatches=4"),
    (["--config.model.num_layer=3"], "num_layer"),
    (["--config.model.num_layers=abc"], "num_layers"),
])
def test_bad_config_fails_before_anything_is_written(tmp_path, overrides, message):
    workdir = tmp_path / "run"
    result = run_train(workdir, *overrides, cache=tmp_path / "cache")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not workdir.exists()
    assert untouched(tmp_path / "cache"), "no data preparation before validation"


@pytest.mark.slow
def test_unwritable_workdir_is_refused(tmp_path):
    result = run_train("/proc/llmjax-run", cache=tmp_path / "cache")
    assert result.returncode == 2 and "cannot write in /proc" in result.stderr


def test_restarted_run_loads_its_steps_from_the_persistent_compilation_cache(tmp_path):
    """The CLI's default cache (under LLMJAX_CACHE): the first run writes the compiled train
    step, a second process of the same config finds it there instead of compiling it. With
    XLA:CPU's oneDNN products off, as `train_env` has them: XLA cannot serialize an executable
    that calls them (see llmjax.cpu_runtime), which no accelerator backend is affected by."""
    env = dict(train_env(tmp_path / "cache"), JAX_DEBUG_LOG_MODULES="jax._src.compiler")
    del env["JAX_COMPILATION_CACHE_DIR"]
    runs = []
    for name in ("first", "second"):
        runs.append(subprocess.run(train_command(tmp_path / name, "--config.train.steps=6"),
                                   cwd=ROOT, env=env, capture_output=True, text=True, timeout=600))
        assert runs[-1].returncode == 0, runs[-1].stderr[-3000:]
    assert list((tmp_path / "cache" / "xla").glob("jit_train_step*"))
    assert "PERSISTENT COMPILATION CACHE MISS for 'jit_train_step'" in runs[0].stderr
    assert "Persistent compilation cache hit for 'jit_train_step'" in runs[1].stderr
    assert "PERSISTENT COMPILATION CACHE MISS for 'jit_train_step'" not in runs[1].stderr


def test_accelerator_extras_name_extras_the_installed_jax_has():
    """`pip install -e '.[gpu]'` (or tpu) must resolve: each names a JAX extra that exists."""
    import importlib.metadata  # noqa: PLC0415
    import re  # noqa: PLC0415
    import tomllib  # noqa: PLC0415

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    provided = set(importlib.metadata.metadata("jax").get_all("Provides-Extra"))
    for name in ("gpu", "gpu-cuda12", "tpu"):
        (requirement,) = extras[name]
        wanted = re.fullmatch(r"jax\[(\w+)\]>=0\.12", requirement)
        assert wanted and wanted.group(1) in provided, (name, requirement, sorted(provided))


def test_config_overrides_are_read_in_every_form_absl_accepts(monkeypatch):
    """What llmjax-sweep applies to every run: each override the command line gave, in whichever
    form absl parsed it (`--noconfig.KEY` was not read, so the runs kept KEY's default)."""
    flag_values = flags.FlagValues()
    config_flag = config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values)
    argv = ["llmjax-sweep", "experiments/seeds.py", "--config", str(ROOT / "configs" / "tiny.py"),
            "--config.train.steps", "7", "--config.train.log_every=3", "-config.seed=5",
            "--noconfig.model.fp32_logits", "--config.checkpoint.required", "-noconfig.checkpoint.async_save",
            "--config.data.seq_len=32"]
    monkeypatch.setattr("sys.argv", argv)  # Where ml_collections reads the overrides from.
    flag_values(argv)
    assert config_overrides(argv[1:], config_flag.value, flag_values) == {
        "train.steps": 7, "train.log_every": 3, "seed": 5, "model.fp32_logits": False,
        "checkpoint.required": True, "checkpoint.async_save": False, "data.seq_len": 32}


@pytest.mark.slow
def test_a_second_training_of_a_busy_workdir_is_refused_at_once(tmp_path):
    """Two trainings of one workdir interleaved their logs and raced each other's checkpoint
    deletions; the second is now refused before it writes anything, naming who holds it."""
    workdir, log = tmp_path / "run", tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(train_command(workdir, "--config.train.steps=1500", "--config.train.log_every=1",
                                               "--config.checkpoint.every_steps=100"),
                                 cwd=ROOT, env=train_env(tmp_path / "cache"), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not re.search(r"^step +5/", log.read_text(), re.M) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    second = run_train(workdir, "--config.train.steps=1500", cache=tmp_path / "cache")
    assert second.returncode == 2 and second.stdout == "" and second.stderr == (
        f"error: --workdir {workdir}: another training is running in it (pid {first.pid} on "
        f"{socket.gethostname()}); wait for it to end or kill {first.pid} on {socket.gethostname()} "
        f"(it checkpoints on SIGTERM), or train in another --workdir.\n"), second.stderr[-2000:]
    assert first.poll() is None, "the first training ended before the second was refused; give it more steps"
    assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    steps = [r["step"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert steps == list(range(1, 1501))  # One writer: every step once, in order.
    assert json.loads((workdir / "status.json").read_text())["state"] == "done"
    assert (workdir / "summary.json").exists() and (workdir / "checkpoints" / "1500").is_dir()
    assert not (workdir / "train.lock").exists()


def test_a_run_that_fails_before_its_first_write_leaves_no_lock_or_workdir(tmp_path):
    workdir = tmp_path / "new" / "run"
    result = run_train(workdir, f"--config.data.source={tmp_path / 'missing'}", cache=tmp_path / "cache")
    assert result.returncode == 2 and result.stderr.startswith("error:"), result.stderr[-2000:]
    assert not (tmp_path / "new").exists()


def test_a_lock_file_that_cannot_be_opened_is_one_error_line(tmp_path, monkeypatch):
    """Another user's train.lock (read-only to this one; root, running the tests, would open
    it anyway, hence the stand-in) is a WorkdirError naming the fix, not a traceback."""
    import os  # noqa: PLC0415

    from llmjax import workdir_lock  # noqa: PLC0415
    from llmjax.rundir import RunDir, WorkdirError  # noqa: PLC0415

    (tmp_path / workdir_lock.LOCK).write_text("1 elsewhere")

    def refused(*_):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(WorkdirError, match="cannot open its train.lock .* give it write permission"):
        workdir_lock.check_free(RunDir(tmp_path))
