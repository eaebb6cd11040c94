"""llmjax-launch: a real local multi-process job, and the SLURM and TPU commands it writes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmjax import workdir_lock
from llmjax.rundir import RunDir

import stray_processes
from conftest import ROOT, run_train, train_env


def launch(tmp_path, *args, devices=1, config="configs/tiny.py"):
    return subprocess.run([sys.executable, "-m", "llmjax.cli.launch", f"--config={config}", *args],
                          cwd=ROOT, env=train_env(tmp_path / "cache", devices), capture_output=True,
                          text=True, timeout=600)


def losses(workdir):
    return [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


# The other families' two processes form a hybrid mesh: data across them (DCN), fsdp within.
HYBRID = ("--config.mesh.dcn.data=2", "--config.mesh.ici.data=1", "--config.mesh.ici.fsdp=4")


@pytest.mark.slow
@pytest.mark.parametrize("config, mesh", [("configs/tiny.py", ()), ("configs/gpt2_tiny.py", HYBRID),
                                          ("configs/bert_tiny.py", HYBRID), ("configs/t5_tiny.py", HYBRID)])
def test_local_launch_of_two_processes_matches_one_process(tmp_path, config, mesh):
    overrides = ("--config.model.dtype=float32", "--config.train.steps=10", "--config.train.log_every=1")
    assert run_train(tmp_path / "one", *overrides, cache=tmp_path / "cache", devices=8,
                     config=config).returncode == 0
    result = launch(tmp_path, f"--workdir={tmp_path / 'two'}", "--cluster=local", "--num_processes=2",
                    "--devices_per_process=4", *overrides, *mesh, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: process 1 of 2 reads rows 4..7" in result.stdout
    if mesh:
        assert "mesh: {'data': 2, 'fsdp': 4, 'expert': 1, 'sequence': 1, 'tensor': 1} over 8 cpu devices" in result.stdout
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)


@pytest.mark.slow
def test_ctrl_c_reaches_every_process_and_the_job_checkpoints_once(tmp_path):
    """SIGINT to the job's whole process group, as Ctrl-C in a terminal sends it: each process
    receives it at its own moment, yet all stop on one agreed step, write one checkpoint
    together and exit 75; rerunning the command continues from it to the end."""
    workdir = tmp_path / "run"
    args = [sys.executable, "-m", "llmjax.cli.launch", "--config=configs/tiny.py", f"--workdir={workdir}",
            "--cluster=local", "--num_processes=2", "--devices_per_process=1", "--config.train.steps=400",
            "--config.train.log_every=1", "--config.checkpoint.every_steps=1000"]
    job = subprocess.Popen(args, cwd=ROOT, env=train_env(tmp_path / "cache"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in job.stdout:
        if line.startswith("step     10/"):
            os.killpg(job.pid, signal.SIGINT)
            break
    out = job.communicate(timeout=300)[0]
    assert job.returncode == 75, out[-3000:]
    stopped = re.findall(r"step\s+(\d+)/400 \| SIG\w+: checkpoint written", out)
    assert len(stopped) == 1 and 10 <= int(stopped[0]) < 400, out[-3000:]
    assert [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] == stopped
    assert {p.name for p in (workdir / "checkpoints" / stopped[0] / "params").iterdir()} >= {
        "ocdbt.process_0", "ocdbt.process_1"}  # Both processes wrote their shards of it.
    args[args.index("--config.train.steps=400")] = f"--config.train.steps={int(stopped[0]) + 5}"
    resumed = subprocess.run(args, cwd=ROOT, env=train_env(tmp_path / "cache"), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from checkpoint step {stopped[0]} (data step {stopped[0]})" in resumed.stdout


@pytest.mark.slow
def test_processes_stop_when_the_launcher_is_killed(tmp_path):
    """A SIGKILLed launcher passes no signal on: its processes trained on, orphaned, writing the
    checkpoints of a workdir that a relaunch resumed. Now the kernel sends each of them SIGTERM
    when the launcher dies: they stop within seconds, checkpointed as on a preemption."""
    workdir, log = tmp_path / "run", tmp_path / "launch.log"
    with open(log, "w") as out:
        job = subprocess.Popen([sys.executable, "-m", "llmjax.cli.launch", "--config=configs/tiny.py",
                                f"--workdir={workdir}", "--cluster=local", "--num_processes=2",
                                "--devices_per_process=1", "--config.train.steps=100000",
                                "--config.train.log_every=1", "--config.checkpoint.every_steps=100000"],
                               cwd=ROOT, env=train_env(tmp_path / "cache"), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not re.search(r"^step +3/", log.read_text(), re.M) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    children = [int(pid) for pid in Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()]
    assert len(children) == 2, log.read_text()[-3000:]
    job.kill()
    job.wait()
    left = stray_processes.survivors(patience=20)
    assert not left, f"still running after the launcher was killed: {left}"
    for pid in children:  # Orphans of this test process (conftest's subreaper): reaped here.
        os.waitpid(pid, 0)
    assert "SIGTERM: checkpoint written" in log.read_text(), log.read_text()[-3000:]


def test_a_local_launch_into_a_workdir_in_training_is_refused_before_any_process_starts(tmp_path):
    workdir = tmp_path / "run"
    with workdir_lock.held(RunDir(workdir)):  # This test process stands for the training there.
        result = launch(tmp_path, f"--workdir={workdir}", "--cluster=local", "--dry_run")
    assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
    assert result.stderr.startswith(f"error: --workdir {workdir}: another training is running in it "
                                    f"(pid {os.getpid()} on {socket.gethostname()}); ")
    assert not workdir.exists()


def test_slurm_script(tmp_path):
    result = launch(tmp_path, f"--workdir={tmp_path / 'run'}", "--cluster=slurm", "--dry_run", "--nodes=2",
                    "--tasks_per_node=4", "--gpus_per_node=4", "--partition=gpu", "--account=lab",
                    "--time=01:00:00", "--config.train.steps=50")
    assert result.returncode == 0, result.stderr[-2000:]
    script = result.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=01:00:00"):
        assert line + "\n" in script
    srun = [line for line in script.splitlines() if line.startswith("srun ")][0]
    assert "-m llmjax.cli.train --config=configs/tiny.py --config.train.steps=50" in srun
    assert srun.endswith(f"--workdir={tmp_path / 'run'} --auto_distributed")
    assert not (tmp_path / "run").exists()


def test_tpu_command(tmp_path):
    result = launch(tmp_path, f"--workdir={tmp_path / 'run'}", "--cluster=tpu", "--dry_run",
                    "--tpu_name=pod", "--zone=us-central2-b", "--project=p1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --project=p1 --worker=all")
    assert "--auto_distributed" in result.stdout
    missing = launch(tmp_path, f"--workdir={tmp_path / 'run'}", "--cluster=tpu", "--dry_run")
    assert missing.returncode == 1 and "needs --tpu_name and --zone" in missing.stderr


# Every form absl's parser accepts for a --config override, each setting another key.
OVERRIDE_FORMS = ("--config.train.steps", "7", "--config.train.log_every=3", "-config.seed=5",
                  "--noconfig.model.fp32_logits", "--config.checkpoint.required", "-noconfig.checkpoint.async_save")


@pytest.mark.parametrize("cluster", ["local", "slurm"])
def test_every_form_of_config_override_reaches_the_processes(tmp_path, cluster):
    """The launcher validates the config with all its overrides applied; each process must build
    that config, so each must get every override as given (`--noconfig.KEY` was dropped)."""
    result = launch(tmp_path, f"--workdir={tmp_path / 'run'}", f"--cluster={cluster}", "--dry_run", *OVERRIDE_FORMS)
    assert result.returncode == 0, result.stderr[-2000:]
    command = [line for line in result.stdout.splitlines() if "llmjax.cli.train" in line][0]
    assert "-m llmjax.cli.train --config=configs/tiny.py " + " ".join(OVERRIDE_FORMS) + " --workdir=" in command
