"""Checkpoints, exact resume, preemption, crashes, damage and divergence: real training
subprocesses, real signals, real files."""

import json
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, run_train, train_command, train_env
from llmjax.checkpoint import Checkpointer
from llmjax.config import default_config

pytestmark = pytest.mark.slow

FP32 = ("--config.model.dtype=float32",)
EXIT_PREEMPTED = 75


def records(workdir, split="train"):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def saved_steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def final_params(workdir):
    directory = workdir / "checkpoints"
    step = saved_steps(workdir)[-1]
    restored = ocp.StandardCheckpointer().restore(directory / str(step) / "params")
    return step, jax.tree.map(np.asarray, restored)


def start_train(workdir, *overrides, cache, devices=1, config="configs/tiny.py"):
    return subprocess.Popen(train_command(workdir, *overrides, config=config), cwd=ROOT, env=train_env(cache, devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(workdir, step, process, timeout=300):
    """Blocks until the run has logged `step` (metrics are flushed per record)."""
    deadline = time.time() + timeout
    path = workdir / "metrics.jsonl"
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.communicate()[1][-2000:]}")
        if path.exists():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines()
                     if line.endswith("}")]
            if steps and max(steps) >= step:
                return
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def preempt(workdir, at_step, overrides, cache, devices=1, sig=signal.SIGTERM, config="configs/tiny.py"):
    process = start_train(workdir, *overrides, cache=cache, devices=devices, config=config)
    wait_for_step(workdir, at_step, process)
    process.send_signal(sig)
    out, err = process.communicate(timeout=300)
    assert process.returncode == EXIT_PREEMPTED, err[-3000:]
    assert f"{sig.name}: checkpoint written, exiting with code 75" in out
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_setup_checkpoints_after_the_first_step(tmp_path, sig):
    """Preempted while the data is prepared and the steps compile (the moments a large model
    spends minutes in): exit 75 with a checkpoint, not death by the signal."""
    workdir = tmp_path / "run"
    process = start_train(workdir, "--config.train.steps=50", cache=tmp_path / "cache")
    for line in process.stdout:
        if line.startswith("config:"):  # Printed before anything is built, prepared or compiled.
            process.send_signal(sig)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == EXIT_PREEMPTED, err[-3000:]
    assert f"step      1/50 | {sig.name}: checkpoint written, exiting with code 75" in out, out[-3000:]
    assert saved_steps(workdir) == [1]
    assert json.loads((workdir / "status.json").read_text())["state"] == "preempted"


def assert_same_run(resumed, reference, rtol=0.0):
    a, b = records(resumed), records(reference)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    # Every step consumed exactly the next data step: nothing skipped, nothing repeated.
    assert [r["data_step"] for r in a] == [r["step"] - 1 for r in a]
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=rtol)


# Every family, and every objective that draws random numbers (MLM masks, span corruption,
# prefix-LM split points: each a function of (seed, step, row)).
@pytest.mark.parametrize("config, microbatches, sig", [("configs/tiny.py", 1, signal.SIGTERM),
                                                       ("configs/tiny.py", 2, signal.SIGINT),
                                                       ("configs/gpt2_tiny.py", 1, signal.SIGTERM),
                                                       ("configs/lstm_tiny.py", 1, signal.SIGTERM),
                                                       ("configs/bert_tiny.py", 1, signal.SIGTERM),
                                                       ("configs/t5_tiny.py", 1, signal.SIGTERM),
                                                       ("configs/gpt2_tiny.py|prefix_lm", 1, signal.SIGTERM),
                                                       ("configs/moe_tiny.py", 2, signal.SIGTERM),
                                                       ("configs/finetune.py:package,tiny", 1, signal.SIGTERM),
                                                       ("configs/finetune.py:docstring,tiny", 1, signal.SIGTERM)])
def test_preempted_run_continues_bit_identically(tmp_path, config, microbatches, sig):
    config, _, objective = config.partition("|")
    overrides = ("--config.train.steps=60", "--config.train.log_every=1",
                 "--config.checkpoint.every_steps=10", f"--config.train.microbatches={microbatches}",
                 *([f"--config.objective.name={objective}"] if objective else []))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_train(reference, *overrides, cache=tmp_path / "cache", config=config).returncode == 0
    out = preempt(resumed, 13, overrides, tmp_path / "cache", sig=sig, config=config)  # Mid-epoch: 26 steps/epoch.
    stopped_at = int(out.split(f"{sig.name}: checkpoint written")[0].split("step")[-1].split("/")[0])
    assert 13 <= stopped_at < 60
    finished = run_train(resumed, *overrides, cache=tmp_path / "cache", config=config)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"resuming from checkpoint step {stopped_at} (data step {stopped_at})" in finished.stdout
    assert_same_run(resumed, reference)
    step_a, params_a = final_params(resumed)
    step_b, params_b = final_params(reference)
    assert step_a == step_b == 60
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


# Four of every head, so that tensor=4 splits them.
FOUR_HEADS = {"configs/tiny.py": ("--config.model.num_kv_heads=4",),
              "configs/bert_tiny.py": ("--config.model.num_heads=4", "--config.model.head_dim=16"),
              "configs/t5_tiny.py": ("--config.model.num_heads=4", "--config.model.head_dim=16")}


@pytest.mark.parametrize("config", FOUR_HEADS)
def test_resume_on_other_meshes_and_device_counts(tmp_path, config):
    overrides = (*FP32, *FOUR_HEADS[config], "--config.train.steps=45",
                 "--config.train.log_every=1", "--config.checkpoint.every_steps=100")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    data8 = ("--config.mesh.ici.data=8",)
    cache, run = tmp_path / "cache", dict(config=config)
    assert run_train(reference, *overrides, *data8, cache=cache, devices=8, **run).returncode == 0
    preempt(resumed, 10, (*overrides, *data8), cache, devices=8, **run)
    out = preempt(resumed, 25, (*overrides, "--config.mesh.ici.data=1", "--config.mesh.ici.fsdp=2",
                                "--config.mesh.ici.tensor=4"), cache, devices=8, **run)
    assert "mesh: {'data': 1, 'fsdp': 2, 'expert': 1, 'sequence': 1, 'tensor': 4}" in out and "resuming from checkpoint" in out
    finished = run_train(resumed, *overrides, cache=cache, devices=1, **run)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "over 1 cpu devices" in finished.stdout
    assert_same_run(resumed, reference, rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                 final_params(resumed)[1], final_params(reference)[1])


def _largest_file(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path):
    overrides = ("--config.train.steps=30", "--config.checkpoint.every_steps=10")
    workdir = tmp_path / "run"
    assert run_train(workdir, *overrides, cache=tmp_path / "cache").returncode == 0
    victim = _largest_file(workdir / "checkpoints" / "30" / "params")
    original = victim.read_bytes()
    victim.write_bytes(original[:10])
    result = run_train(workdir, "--config.train.steps=40", "--config.checkpoint.every_steps=10",
                       cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"warning: checkpoint of step 30 is damaged (file {victim} has 10 bytes, "
            f"{len(original)} were written)") in result.stdout
    assert "resuming from checkpoint step 20" in result.stdout
    aside = list((workdir / "checkpoints" / "damaged").iterdir())
    assert [p.name.split("-")[0] for p in aside] == ["30"] and (aside[0] / "params").is_dir()
    assert (aside[0] / "integrity.json").exists()
    assert final_params(workdir)[0] == 40

    for step in (20, 30, 40):  # Now every checkpoint is damaged: a clear error, nothing lost.
        if (workdir / "checkpoints" / str(step)).exists():
            _largest_file(workdir / "checkpoints" / str(step) / "params").unlink()
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
    result = run_train(workdir, "--config.train.steps=50", cache=tmp_path / "cache")
    assert result.returncode == 2
    assert "none of the checkpoints" in result.stderr and "nothing was overwritten" in result.stderr
    after = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
    assert len(after) == len(before), "checkpoints are moved aside, never deleted"


def test_divergence_guard_rolls_back_and_skips_the_bad_batches(tmp_path):
    workdir = tmp_path / "run"
    result = run_train(workdir, "--config.train.steps=40", "--config.train.log_every=1",
                       "--config.checkpoint.every_steps=10", "--config.train.inject_nan_at=22,23,24",
                       cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("3 bad steps in a row: rolled back to checkpoint step 20 and skipped data steps "
            "20..24 (rollback 1 of at most 3)") in result.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["rollbacks"] == 1 and np.isfinite(summary["final_train_loss"])
    train = {r["step"]: r for r in records(workdir)}  # The last record of each step wins.
    assert train[21]["data_step"] == 25 and train[40]["data_step"] == 44

    hopeless = run_train(tmp_path / "hopeless", "--config.train.steps=40",
                         "--config.checkpoint.every_steps=5", "--config.train.guard_max_rollbacks=2",
                         "--config.train.inject_nan_at=" + ",".join(map(str, range(6, 40))),
                         cache=tmp_path / "cache")
    assert hopeless.returncode == 2
    assert "diverged again after 2 rollbacks" in hopeless.stderr


def test_init_from_another_run(tmp_path):
    parent = tmp_path / "parent"
    assert run_train(parent, "--config.train.steps=20", "--config.checkpoint.every_steps=10",
                     cache=tmp_path / "cache").returncode == 0
    params_child = tmp_path / "params_child"
    result = run_train(params_child, "--config.train.steps=8", "--config.train.log_every=1",
                       f"--config.checkpoint.init_from={parent}@10", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"initialised from {parent} step 10 (params only)" in result.stdout
    first = records(params_child)[0]
    assert first["data_step"] == 0 and first["learning_rate"] == 0.0  # Fresh optimizer and data.
    assert first["loss"] < records(parent)[0]["loss"] - 0.3  # But trained weights.

    full_child = tmp_path / "full_child"
    result = run_train(full_child, "--config.train.steps=25", "--config.train.log_every=5",
                       f"--config.checkpoint.init_from={parent}", "--config.checkpoint.init_mode=full",
                       cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"initialised from {parent} step 20 (full state)" in result.stdout
    assert [r["step"] for r in records(full_child)] == [25]

    missing = run_train(tmp_path / "x", f"--config.checkpoint.init_from={tmp_path}/nowhere",
                        cache=tmp_path / "cache")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "x").exists()
    wrong_step = run_train(tmp_path / "y", f"--config.checkpoint.init_from={parent}@7",
                           cache=tmp_path / "cache")
    assert wrong_step.returncode == 2 and "has no checkpoint of step 7; it has [10, 20]" in wrong_step.stderr
    assert not (tmp_path / "y").exists()


def test_unwritable_checkpoint_directory_is_an_error(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("not a directory")
    result = run_train(workdir, cache=tmp_path / "cache")
    assert result.returncode == 2
    assert "checkpoint" in result.stderr and "checkpoints" in result.stderr


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """(workdir, cache, the training's stdout) of a 20-step run checkpointed at 10 and 20."""
    root = tmp_path_factory.mktemp("two_checkpoints")
    trained = run_train(root / "run", "--config.train.steps=20", "--config.checkpoint.every_steps=10",
                        cache=root / "cache")
    assert trained.returncode == 0, trained.stderr[-2000:]
    return root / "run", root / "cache", trained.stdout


def ckpt(cache, *args):
    return subprocess.run([sys.executable, "-m", "llmjax.cli.ckpt", *map(str, args)],
                          env=train_env(cache), capture_output=True, text=True, cwd=ROOT)


def test_ckpt_command_lists_and_inspects(two_checkpoints, tmp_path):
    workdir, cache, stdout = two_checkpoints
    workdir = shutil.copytree(workdir, tmp_path / "run")
    listed = ckpt(cache, "list", workdir)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["step", "data_step", "loss", "size"]
    assert [line.split()[0] for line in lines[1:]] == ["10", "20"]
    loss_20 = json.loads((workdir / "summary.json").read_text())["final_train_loss"]
    assert float(lines[2].split()[2]) == pytest.approx(loss_20, abs=1e-4)
    inspected = ckpt(cache, "inspect", f"--workdir={workdir}", "--step=10")  # As every other command takes it.
    assert inspected.returncode == 0, inspected.stderr
    assert "layers/mlp/gate/kernel" in inspected.stdout and "(2, 64, 128)" in inspected.stdout
    count = stdout.split("parameters: ")[1].split()[0]  # The trainer's own formula.
    assert f"total parameters: {count}" in inspected.stdout
    # Each checkpoint says how far into the run it was saved: on the run's own clock.
    seconds = [json.loads((workdir / "checkpoints" / str(s) / "meta" / "metadata").read_text())["wall_seconds"]
               for s in (10, 20)]
    assert 0 < seconds[0] < seconds[1] <= json.loads((workdir / "summary.json").read_text())["wall_seconds"]
    assert f"saved {seconds[0]:.1f} s into the run" in inspected.stdout
    # Asked for fewer steps than it has trained: refused, where it used to report "done".
    shorter = run_train(workdir, "--config.train.steps=15", cache=cache)
    assert shorter.returncode == 2 and shorter.stderr.startswith(
        f"error: config.train.steps=15: the run in {workdir} has reached step 20 already"), shorter.stderr[-2000:]



def test_ckpt_command_marks_damaged_checkpoints_and_refuses_to_inspect_them(two_checkpoints, tmp_path):
    """A truncated metadata file, a params item emptied: `list` says what is wrong with each
    step and lists the others; `inspect` of one is an error naming the step, the damage and
    the newest intact step, never a traceback."""
    workdir, cache, _ = two_checkpoints
    workdir = shutil.copytree(workdir, tmp_path / "run")
    directory = workdir / "checkpoints"
    (directory / "10" / "meta" / "metadata").write_text('{"step": 10, "data_st')
    listed = ckpt(cache, "list", workdir)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr[-2000:]
    rows = listed.stdout.splitlines()[1:]
    assert rows[0].startswith(f"      10  damaged: {directory / '10' / 'meta' / 'metadata'} cannot be read")
    assert rows[1].split()[:2] == ["20", "20"]
    inspected = ckpt(cache, "inspect", workdir, "--step=10")
    assert inspected.returncode == 2 and inspected.stderr.startswith(
        f"error: checkpoint step 10 in {directory} is damaged: {directory / '10' / 'meta' / 'metadata'} "
        f"cannot be read"), inspected.stderr[-2000:]
    assert inspected.stderr.rstrip().endswith("Inspect the newest intact one with --step 20.")
    for f in (directory / "20" / "params").iterdir():
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    listed = ckpt(cache, "list", workdir)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr[-2000:]
    assert listed.stdout.splitlines()[2].startswith("      20  damaged: file ")
    latest = ckpt(cache, "inspect", workdir)
    assert latest.returncode == 2 and latest.stderr.startswith(
        f"error: checkpoint step 20 in {directory} is damaged: file {directory / '20' / 'params'}"), latest.stderr
    assert "No other checkpoint of the run is intact: restore them from a backup." in latest.stderr
    assert len(latest.stderr.splitlines()) == 1 and "Traceback" not in latest.stderr


def _free_port():
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_process_preemption_resumes_on_one_process(tmp_path):
    """2 processes x 4 devices get SIGTERM, agree on one step and write one checkpoint
    together; a single process with 8 devices continues it exactly where it stopped."""
    overrides = (*FP32, "--config.train.steps=40", "--config.train.log_every=1",
                 "--config.checkpoint.every_steps=100")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_train(reference, *overrides, cache=tmp_path / "cache", devices=8).returncode == 0
    port = _free_port()
    processes = [subprocess.Popen(
        train_command(resumed, *overrides, "--num_processes=2", f"--process_id={i}",
                      f"--coordinator_address=localhost:{port}"),
        cwd=ROOT, env=train_env(tmp_path / "cache", devices=4), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    wait_for_step(resumed, 10, processes[0])
    for process in processes:
        process.send_signal(signal.SIGTERM)
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [EXIT_PREEMPTED] * 2, outputs[1][1][-3000:]
    assert "mesh: {'data': 8, 'fsdp': 1, 'expert': 1, 'sequence': 1, 'tensor': 1} over 8 cpu devices" in outputs[0][0]
    assert "SIGTERM: checkpoint written" in outputs[0][0]
    assert "step " not in outputs[1][0] and "config:" not in outputs[1][0]  # One voice per job.
    # Each process loads only the rows of the global batch that its 4 devices hold.
    assert "data: process 0 of 2 reads rows 0..3 of each global batch of 8" in outputs[0][0]
    assert "data: process 1 of 2 reads rows 4..7 of each global batch of 8" in outputs[1][0]
    stopped_at = saved_steps(resumed)
    assert len(stopped_at) == 1 and 10 <= stopped_at[0] < 40
    assert {p.name for p in (resumed / "checkpoints" / str(stopped_at[0]) / "params").iterdir()} >= {
        "ocdbt.process_0", "ocdbt.process_1"}  # Both processes wrote their shards.

    finished = run_train(resumed, *overrides, cache=tmp_path / "cache", devices=8)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"resuming from checkpoint step {stopped_at[0]}" in finished.stdout
    assert_same_run(resumed, reference, rtol=1e-5)


@pytest.fixture
def full_disk(tmp_path):
    """A workdir whose checkpoints directory is a 2 MB filesystem: room for one tiny-model
    checkpoint (1.2 MB), not two."""
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(checkpoints)], check=True)
    yield tmp_path / "run"
    subprocess.run(["umount", str(checkpoints)], check=True)


def test_full_disk_stops_the_run_unless_told_otherwise(full_disk, tmp_path):
    result = run_train(full_disk, "--config.checkpoint.every_steps=5", cache=tmp_path / "cache")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]  # (Orbax also logs its own traceback.)
    message = errors[0]
    assert message.startswith("error: a checkpoint save to") and "No space left on device" in message
    assert "--config.checkpoint.required=False" in message
    assert (full_disk / "checkpoints" / "5" / "commit_success.txt").exists()  # The good one stays.

    tolerant = run_train(full_disk, "--config.checkpoint.every_steps=5", "--config.checkpoint.required=False",
                         cache=tmp_path / "cache")
    assert tolerant.returncode == 0, tolerant.stderr[-2000:]
    assert "resuming from checkpoint step 5" in tolerant.stdout
    assert "continuing without it (checkpoint.required=False)" in tolerant.stdout


def test_a_tolerated_save_failure_is_reported_once_at_close(tmp_path):
    """Orbax keeps a failed save's error and raises it again from close(): with
    checkpoint.required=False the run must end with its one warning, not that second raise
    (which, depending on thread timing, failed the full-disk run above one time in five)."""
    config = default_config()
    config.checkpoint.required = False
    warnings = []
    checkpointer = Checkpointer(tmp_path / "checkpoints", config, log=warnings.append)
    checkpointer._last_started = 20

    def fail():
        raise ValueError("RESOURCE_EXHAUSTED: No space left on device")

    checkpointer.manager.wait_until_finished = fail
    checkpointer.manager.close = fail  # As Orbax's does: it waits, so it raises the same error.
    checkpointer.close()
    assert len(warnings) == 1 and "noticed at step 20" in warnings[0] and "No space left" in warnings[0]


def test_retention_keeps_the_last_k_and_every_mth(tmp_path):
    workdir = tmp_path / "run"
    result = run_train(workdir, "--config.train.steps=40", "--config.checkpoint.every_steps=5",
                       "--config.checkpoint.keep_last=2", "--config.checkpoint.keep_every=15",
                       cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-2000:]
    kept = saved_steps(workdir)
    assert kept == [15, 30, 35, 40]
    assert sorted(int(p.stem) for p in (workdir / "checkpoints" / "integrity").glob("*.json")) == kept


def test_time_based_saves(tmp_path):
    workdir = tmp_path / "run"
    result = run_train(workdir, "--config.train.steps=60", "--config.checkpoint.every_steps=0",
                       "--config.checkpoint.every_minutes=0.01", "--config.checkpoint.keep_last=100",
                       cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-2000:]
    kept = saved_steps(workdir)
    assert len(kept) >= 3 and kept[-1] == 60 and kept != list(range(kept[0], 61, 5))


@pytest.mark.parametrize("victim", [1, 0])
def test_a_dead_process_stops_the_others_in_bounded_time(tmp_path, victim):
    """kill -9 one process of a 2-process job: the survivor must exit with an error naming the
    cause within the heartbeat timeout (20 s), not wait forever in a collective."""
    port = _free_port()
    processes = [subprocess.Popen(
        train_command(tmp_path / "run", "--config.train.steps=100000", "--config.train.log_every=1",
                      "--num_processes=2", f"--process_id={i}", f"--coordinator_address=localhost:{port}"),
        cwd=ROOT, env=train_env(tmp_path / "cache", devices=4), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    wait_for_step(tmp_path / "run", 5, processes[0])
    processes[victim].kill()
    survivor = processes[1 - victim]
    start = time.time()
    try:
        _, err = survivor.communicate(timeout=90)
    finally:
        survivor.kill()
        processes[victim].communicate()
    assert survivor.returncode != 0
    assert time.time() - start < 90
    assert "task" in err.lower() and ("died" in err or "unhealthy" in err or "heartbeat" in err), err[-3000:]


# Dense: data across the processes, fsdp within each. MoE: the experts split across the
# processes (all-to-all over the network) and within each.
HYBRID = {"configs/tiny.py": (("--config.mesh.dcn.data=2", "--config.mesh.ici.data=1", "--config.mesh.ici.fsdp=4"),
                              "{'data': 2, 'fsdp': 4, 'expert': 1, 'sequence': 1, 'tensor': 1}"),
          "configs/moe_tiny.py": (("--config.mesh.dcn.expert=2", "--config.mesh.ici.data=1",
                                   "--config.mesh.ici.expert=2", "--config.mesh.ici.fsdp=2"),
                                  "{'data': 1, 'fsdp': 2, 'expert': 4, 'sequence': 1, 'tensor': 1}")}


@pytest.mark.parametrize("config", HYBRID)
def test_hybrid_mesh_across_two_processes_matches_one_process(tmp_path, config):
    """Two processes of 4 devices each: the same losses as one process with 8 devices."""
    overrides = (*FP32, "--config.train.steps=12", "--config.train.log_every=1")
    reference = tmp_path / "reference"
    assert run_train(reference, *overrides, cache=tmp_path / "cache", devices=8, config=config).returncode == 0
    hybrid, mesh = HYBRID[config]
    port = _free_port()
    processes = [subprocess.Popen(
        train_command(tmp_path / "hybrid", *overrides, *hybrid, "--num_processes=2",
                      f"--process_id={i}", f"--coordinator_address=localhost:{port}", config=config),
        cwd=ROOT, env=train_env(tmp_path / "cache", devices=4), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][1][-3000:]
    assert f"mesh: {mesh} over 8 cpu devices" in outputs[0][0]
    assert_same_run(tmp_path / "hybrid", reference, rtol=1e-5)
    # Each process builds only its own rows of the validation batches; the metrics are the same.
    validation = [records(run, "val") for run in (tmp_path / "hybrid", reference)]
    assert [r["step"] for r in validation[0]] == [10, 12]
    for key in ("loss", "bits_per_byte"):
        np.testing.assert_allclose([r[key] for r in validation[0]], [r[key] for r in validation[1]], rtol=1e-5)


def test_a_checkpoint_of_another_model_is_refused_from_its_metadata(tmp_path):
    """Found before anything compiles (train() calls this first): the parameter that differs is
    named; the same model passes, and so does a directory without checkpoints."""
    from conftest import make_tiny_config  # noqa: PLC0415
    from llmjax.checkpoint import CheckpointError, Checkpointer, check_same_model, metadata  # noqa: PLC0415
    from llmjax.run import abstract_params, bootstrap  # noqa: PLC0415

    config = make_tiny_config()
    config.mesh.ici.data = 8
    run = bootstrap(config)
    checkpointer = Checkpointer(tmp_path / "checkpoints", config)
    checkpointer.save(5, run.create_state(), lambda: metadata(5, 5, 1.0, config, 0.0), force=True)
    checkpointer.close()
    check_same_model(tmp_path / "checkpoints", None, abstract_params(config)[0])
    check_same_model(tmp_path / "nothing", None, abstract_params(config)[0])
    wider = make_tiny_config(mlp_dim=96)
    with pytest.raises(CheckpointError, match=r"checkpoint step 5 .* another model .*\['mlp'\].* has shape "
                                              r"\(2, 32, 64\) there, \(2, 32, 96\) in this model.*new --workdir"):
        check_same_model(tmp_path / "checkpoints", 5, abstract_params(wider)[0])
    with pytest.raises(CheckpointError, match=r"\['final_norm'\]\['bias'\] is missing there"):
        check_same_model(tmp_path / "checkpoints", None, abstract_params(make_tiny_config("gpt2"))[0])


def test_a_run_resumed_at_its_last_step_keeps_its_summary(tmp_path):
    """A rerun that finds the last checkpoint (killed after saving it, or simply run again)
    trains nothing and reports the same final figures, not NaN."""
    workdir, overrides = tmp_path / "run", ("--config.train.steps=10", "--config.checkpoint.every_steps=5")
    assert run_train(workdir, *overrides, cache=tmp_path / "cache").returncode == 0
    first = json.loads((workdir / "summary.json").read_text())
    again = run_train(workdir, *overrides, cache=tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from checkpoint step 10" in again.stdout
    second = json.loads((workdir / "summary.json").read_text())
    for key in ("final_train_loss", "final_val_loss", "final_val_bits_per_byte"):
        assert second[key] == pytest.approx(first[key], rel=1e-6), key
    assert json.loads((workdir / "status.json").read_text())["state"] == "done"


def _files(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_an_optimizer_whose_state_differs_is_refused_before_anything_is_touched(tmp_path):
    """Clipping switched off changes the optimizer state's parts: the restore would fail and,
    read as damage, set every checkpoint aside (the next run then restarted from step 0). It
    is one error naming the change, nothing moved or rewritten; the original command resumes.
    init_mode=full from another optimizer (Muon) is refused the same way, nothing written."""
    workdir, cache = tmp_path / "run", tmp_path / "cache"
    assert run_train(workdir, "--config.train.steps=10", cache=cache).returncode == 0
    before = _files(workdir)
    refused = run_train(workdir, "--config.train.steps=10", "--config.optimizer.grad_clip=0", cache=cache)
    assert refused.returncode != 0
    assert refused.stderr.count("error:") == 1 and "Traceback" not in refused.stderr
    assert "another optimizer" in refused.stderr and "optimizer.grad_clip: 1.0 -> 0.0" in refused.stderr
    assert f"--config.checkpoint.init_from={workdir}" in refused.stderr
    assert _files(workdir) == before
    again = run_train(workdir, "--config.train.steps=12", cache=cache)
    assert again.returncode == 0 and "resuming from checkpoint step 10" in again.stdout
    branch = run_train(tmp_path / "branch", f"--config.checkpoint.init_from={workdir}",
                       "--config.checkpoint.init_mode=full", "--config.optimizer.name=muon", cache=cache)
    assert branch.returncode != 0 and "another optimizer" in branch.stderr and "init_mode=params" in branch.stderr
    assert not (tmp_path / "branch").exists()


def test_logged_means_skip_bad_steps_and_survive_a_resume_mid_interval(tmp_path):
    """A skipped step (non-finite) is counted, not averaged into its interval's loss; a run
    stopped mid-interval (here: a shorter run extended) logs the same means as one never
    stopped, from the interval's metrics its checkpoint kept."""
    overrides = ("--config.train.log_every=5", "--config.train.inject_nan_at=8", "--config.optimizer.schedule=constant")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_train(reference, *overrides, "--config.train.steps=20", cache=tmp_path / "cache").returncode == 0
    assert run_train(resumed, *overrides, "--config.train.steps=7", cache=tmp_path / "cache").returncode == 0
    assert run_train(resumed, *overrides, "--config.train.steps=20", cache=tmp_path / "cache").returncode == 0
    logged = {r["step"]: r for r in records(reference)}
    assert logged[10]["skipped"] == 1 and all(np.isfinite(r["loss"]) for r in logged.values())
    assert np.isfinite(json.loads((reference / "summary.json").read_text())["final_train_loss"])
    again = {r["step"]: r for r in records(resumed)}
    for step in (10, 15, 20):
        for key in ("loss", "grad_norm", "learning_rate", "skipped", "data_step"):
            assert again[step][key] == logged[step][key], (step, key)
