"""Command lines that cannot work, across the commands, through real processes: each ends in
one `error:` line that names the problem and the fix, before any expensive work (a whole
evaluation, a job's processes on every host), and leaves nothing on disk. What each command's
own bad-input suite covers in depth (test_bad_input.py: llmjax-train and llmjax-prepare) is not
repeated here; these are the flags and arguments around it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, train_env

TINY = "--config=configs/tiny.py"


def _cases(tmp):
    other_run = tmp / "other_run"  # A run's directory holding a 3-layer tiny model.
    return {
        "train: a stray argument": (["llmjax.cli.train", TINY, f"--workdir={tmp / 'w'}", "steps=6"],
                                    "error: unexpected arguments: steps=6; flags take the form --name=value"),
        "train: a process id outside the job": (["llmjax.cli.train", TINY, f"--workdir={tmp / 'w'}", "--num_processes=2",
                                                  "--process_id=5", "--coordinator_address=localhost:1"],
                                                 "error: --num_processes=2 --process_id=5: a job of N processes"),
        "sample: sampling flags with beam search": (["llmjax.cli.sample", f"--workdir={tmp / 'w'}", "--prompt=def ",
                                                     "--num_beams=3", "--top_k=5"],
                                                    "error: --top_k shape sampling, which beam search"),
        "plan: --devices=-4": (["llmjax.cli.plan", TINY, "--devices=-4"], "error: --devices=-4: give the job's"),
        "config: an objective value no device count can run": (["llmjax.cli.config", "--config=configs/bert_tiny.py",
                                                                "--config.objective.mask_rate=1.5"],
                                                               "error: config.objective.mask_rate=1.5: must be in (0, 1]"),
        "config: a typo in a config file's options": (["llmjax.cli.config", "--config=configs/finetune.py:package,lroa"],
                                                      "error: --config=configs/finetune.py:package,lroa, line"),
        "train: a prepared dataset as the workdir": (["llmjax.cli.train", TINY, f"--workdir={tmp / 'dataset'}"],
                                                     f"error: --workdir {tmp / 'dataset'}: holds a dataset prepared"),
        "report: no sweep directory": (["llmjax.cli.report"], "error: usage: llmjax-report SWEEP_DIR"),
        "sweep: --parallel=0": (["llmjax.cli.sweep", "experiments/default.py", f"--workdir={tmp / 'w'}",
                                 "--parallel=0"], "error: --parallel=0: give the number of runs"),
        "eval: --out in a missing directory": (["llmjax.cli.eval", f"--workdir={tmp / 'w'}",
                                                f"--out={tmp / 'missing' / 'eval.json'}"],
                                               f"error: --out {tmp / 'missing' / 'eval.json'}: directory"),
        "eval: --out a directory": (["llmjax.cli.eval", f"--workdir={tmp / 'w'}", f"--out={tmp}"],
                                    f"error: --out {tmp} is a directory"),
        "eval: --out a file that holds no result": (["llmjax.cli.eval", f"--workdir={tmp / 'w'}", f"--out={tmp / 'file'}"],
                                                   f"error: --out {tmp / 'file'} exists and is not an llmjax-eval result"),
        "ckpt: a directory with no checkpoints": (["llmjax.cli.ckpt", "list", str(tmp / "w")],
                                                  f"error: {tmp / 'w' / 'checkpoints'} does not exist; give the workdir"),
        "export: --max_shard_size=0": (["llmjax.cli.export", f"--workdir={tmp / 'w'}", f"--out={tmp / 'w'}",
                                        "--max_shard_size=0"], "error: --max_shard_size 0: give a size"),
        "export: --max_shard_size=infGB": (["llmjax.cli.export", f"--workdir={tmp / 'w'}", f"--out={tmp / 'w'}",
                                            "--max_shard_size=infGB"], "error: --max_shard_size infGB: give a size"),
        "launch: a config no process can run": (
            ["llmjax.cli.launch", TINY, f"--workdir={tmp / 'w'}", "--devices_per_process=1", "--config.train.steps=3"],
            "error: config.optimizer.warmup_steps=5: must be in [0, train.steps=3)"),
        "launch: a mesh that does not fit the job": (
            ["llmjax.cli.launch", TINY, f"--workdir={tmp / 'w'}", "--devices_per_process=1", "--config.mesh.ici.data=4"],
            "error: config.mesh"),
        "launch: --num_processes=0": (["llmjax.cli.launch", TINY, f"--workdir={tmp / 'w'}", "--num_processes=0"],
                                      "error: --num_processes=0: must be at least 1"),
        "launch: a SLURM job into another run's workdir": (
            ["llmjax.cli.launch", TINY, f"--workdir={other_run}", "--cluster=slurm", "--dry_run"],
            f"error: --workdir {other_run}: holds a run with a different model/data/seed/batch size (model.num_layers: 3 -> 2)"),
        "prepare: --val_percent=0": (["llmjax.cli.prepare", f"--input={ROOT / 'configs'}", f"--out={tmp / 'w'}",
                                      "--val_percent=0"], "error: --val_percent=0.0: must be in (0, 100)"),
        "prepare: --eos_id without --tokenizer": (["llmjax.cli.prepare", f"--input={ROOT / 'configs'}",
                                                   f"--out={tmp / 'w'}", "--eos_id=2"],
                                                  "error: --eos_id names a token of the tokenizer"),
        "prepare: a directory as --tokenizer": (["llmjax.cli.prepare", f"--input={ROOT / 'configs'}", f"--out={tmp / 'w'}",
                                                 f"--tokenizer={tmp / 'text'}"],
                                                f"error: tokenizer {tmp / 'text'} is a directory; give the tokenizer file"),
        "prepare: --out a file": (["llmjax.cli.prepare", f"--input={ROOT / 'configs'}", f"--out={tmp / 'file'}"],
                                  f"error: --out {tmp / 'file'} is a file"),
        "prepare: --out inside the input": (["llmjax.cli.prepare", f"--input={tmp / 'text'}", f"--out={tmp / 'text' / 'w'}"],
                                            f"error: --out {tmp / 'text' / 'w'} is inside the input directory"),
    }


CASES = list(_cases(ROOT))


@pytest.mark.parametrize("case", CASES)
def test_a_command_line_that_cannot_work_ends_in_one_clear_error(tmp_path, case):
    (tmp_path / "file").write_text("not a directory\n")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("some text\n" * 50)
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "manifest.json").write_text("{}")
    (tmp_path / "other_run").mkdir()
    spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "configs" / "tiny.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    other = tiny.get_config()
    other.model.num_layers = 3
    (tmp_path / "other_run" / "config.json").write_text(json.dumps(other.to_dict()))
    argv, expected = _cases(tmp_path)[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=train_env(tmp_path / "cache"),
                            capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode in (1, 2) and errors and errors[0].startswith(expected), result.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.parts[len(tmp_path.parts)] != "cache") \
        == [p for p in before if p.parts[0] != "cache"]


def test_launch_passes_on_config_values_given_after_a_space(tmp_path):
    """`--config.train.steps 6`, which absl accepts, reaches every process whole."""
    result = subprocess.run([sys.executable, "-m", "llmjax.cli.launch", TINY, f"--workdir={tmp_path / 'w'}",
                             "--dry_run", "--config.train.steps", "6", "--config.optimizer.warmup_steps", "1"],
                            cwd=ROOT, env=train_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--config.train.steps 6 --config.optimizer.warmup_steps 1 --workdir=" in result.stdout, result.stdout


@pytest.mark.parametrize("command, flag", [("llmjax-train", "--workdir"), ("llmjax-export", "--max_shard_size"),
                                           ("llmjax-import", "--hf"), ("llmjax-sample", "--num_beams"),
                                           ("llmjax-eval", "--batches"), ("llmjax-ckpt", "--step")])
def test_help_lists_the_commands_own_flags(command, flag):
    """An installed command's script defines no flags itself; --help shows its module's."""
    script = Path(sys.executable).parent / command
    result = subprocess.run([str(script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert f"  {flag}" in result.stdout, result.stdout + result.stderr  # absl exits 1 after --help.
