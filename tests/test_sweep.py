"""Presets, sweep expansion and validation, the local launcher (skip, resume, failure) and the
report, with real training subprocesses of the tiny model."""

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from llmjax.config import ConfigError
from llmjax.flops import param_count
from llmjax.presets import compose, model_presets
from llmjax.rundir import RunDir, saved_steps
from llmjax.sweep.expand import SweepError, expand, plan
from llmjax.sweep.names import run_name
from llmjax.sweep import launch, manifest, report
from llmjax.sweep.report import fit_power_law

from conftest import ROOT, train_env


@pytest.mark.parametrize("preset, published", [
    ("llama2_7b", 6_738_415_616),  # Llama 2 7B, as counted by Hugging Face's num_parameters().
    ("llama3_8b", 8_030_261_248),  # Llama 3 8B, likewise.
    ("mixtral_8x7b", 46_702_792_704),  # Mixtral 8x7B, likewise (12,879,925,248 active per token).
])
def test_llama_presets_have_the_published_parameter_counts(preset, published):
    assert param_count(compose(preset).model) == published


def test_moe_flops_count_the_active_parameters():
    """Mixtral 8x7B's 12.9B active parameters (2 of 8 experts, the router, attention,
    embeddings) are what a token computes with; a dense model's active parameters are all."""
    from llmjax.model.llama.flops import active_non_embedding_params, flops_per_token, non_embedding_params  # noqa: PLC0415

    mixtral, dense = compose("mixtral_8x7b").model, compose("llama2_7b").model
    embeddings = 2 * mixtral.vocab_size * mixtral.d_model
    assert active_non_embedding_params(mixtral) + embeddings == 12_879_925_248
    assert active_non_embedding_params(dense) == non_embedding_params(dense)
    attention = 12 * mixtral.num_layers * mixtral.d_model * 4096 / 2
    assert flops_per_token(mixtral, 4096) == 6 * (active_non_embedding_params(mixtral) + embeddings / 2) + attention


@pytest.mark.parametrize("preset, nominal", [("20m", 20e6), ("125m", 125e6), ("350m", 350e6),
                                             ("1.3b", 1.3e9)])
def test_ladder_presets_are_near_their_names(preset, nominal):
    assert 0.8 < param_count(compose(preset).model) / nominal < 1.2


def test_every_preset_is_a_valid_config():
    from llmjax.config import validate  # noqa: PLC0415

    for name in model_presets():
        validate(compose(name), 1)


def test_compose_refuses_unknown_presets_and_keys():
    with pytest.raises(ConfigError, match="no model preset 'huge'"):
        compose("huge")
    with pytest.raises(ConfigError, match="config.train.stepz=3: no such config key"):
        compose("tiny", overrides={"train.stepz": 3})


def test_grid_random_runs_and_seeds_expand():
    runs = expand({"grid": {"a.x": [1, 2], "a.y": ["p", "q"]}, "seeds": [0, 1]})
    assert len(runs) == 8 and runs[0] == {"a.x": 1, "a.y": "p", "seed": 0}
    assert len({json.dumps(r, sort_keys=True) for r in runs}) == 8
    drawn = expand({"random": {"o.lr": ("log_uniform", 1e-4, 1e-2), "o.b": [1, 2]},
                    "num_random": 20, "random_seed": 3})
    assert drawn == expand({"random": {"o.lr": ("log_uniform", 1e-4, 1e-2), "o.b": [1, 2]},
                            "num_random": 20, "random_seed": 3})
    assert all(1e-4 <= r["o.lr"] <= 1e-2 and r["o.b"] in (1, 2) for r in drawn)
    assert min(r["o.lr"] for r in drawn) < 1e-3 < max(r["o.lr"] for r in drawn)
    assert expand({"runs": [{"m.d": 1}, {"m.d": 2}], "seeds": [5]}) == [
        {"m.d": 1, "seed": 5}, {"m.d": 2, "seed": 5}]
    assert expand(None) == [{}]
    with pytest.raises(SweepError, match="unknown fields"):
        expand({"gird": {}})


def test_run_names_show_what_varies():
    overrides = {"optimizer.learning_rate": 0.003, "train.steps": 10, "seed": 1}
    assert run_name(overrides, ["optimizer.learning_rate", "seed"]) == "learning_rate=0.003-seed=1"
    assert run_name({"data.glob": "a/*.py"}, ["data.glob"]) == "glob=a__.py"
    assert run_name({}, []) == "run"


def _experiment(tmp_path, sweep, name="exp.py"):
    path = tmp_path / name
    path.write_text(
        "from llmjax.presets import compose\n"
        "def get_config():\n"
        "    return compose('tiny', data='stdlib_json', overrides={'data.seq_len': 64,\n"
        "        'train.steps': 80, 'train.log_every': 5, 'train.eval_every': 40,\n"
        "        'optimizer.warmup_steps': 5, 'checkpoint.every_steps': 10})\n"
        f"def get_sweep():\n    return {sweep!r}\n")
    return str(path)


@pytest.mark.parametrize("sweep, message", [
    ({"grid": {"optimizer.learnig_rate": [1e-3]}}, "optimizer.learnig_rate=0.001: no such config key"),
    ({"grid": {"model.num_layers": ["deep"]}}, "config.model.num_layers='deep': has the wrong type"),
    ({"grid": {"model.num_kv_heads": [3]}}, "must divide model.num_heads"),
    ({"grid": {"optimizer.learning_rate": [1e-3, 1e-3]}}, "runs would share the workdirs"),
    ({"grid": {"optimizer.learning_rate": [1.0001e-3, 1.0002e-3]}}, "runs would share the workdirs"),
    # Not a list: a string was swept letter by letter, the others were tracebacks or ignored.
    ({"grid": {"data.glob": "json"}}, "sweep grid 'data.glob': 'json' is not a list of values; give a list, "
                                      "e.g. ['json']."),
    ({"grid": {"optimizer.learning_rate": 1e-3}}, "sweep grid 'optimizer.learning_rate': 0.001 is not a list"),
    ({"seeds": 2}, "sweep seeds: 2 is not a list of values; give a list, e.g. [0, 1]."),
    ({"seeds": 0}, "sweep seeds: 0 is not a list of values"),
    ({"grid": {"optimizer.learning_rate": []}}, "sweep grid 'optimizer.learning_rate': the list is empty"),
    ({"grid": [("optimizer.learning_rate", [1e-3])]}, "sweep grid: [('optimizer.learning_rate', [0.001])] is not a dict"),
])
def test_bad_sweeps_are_refused_before_any_run(tmp_path, sweep, message):
    with pytest.raises(SweepError, match=re.escape(message)):
        plan(_experiment(tmp_path, sweep), 1)


def test_shipped_experiments_plan(tmp_path):
    shipped = {"default": 1, "lr_sweep": 6, "scaling_ladder": 4, "families": 8, "optimizers": 10, "finetune": 5,
               "moe": 3}
    for name, count in shipped.items():
        _, runs, _ = plan(str(ROOT / "experiments" / f"{name}.py"), 1)
        assert len(runs) == count
    _, families, _ = plan(str(ROOT / "experiments" / "families.py"), 1)
    assert [r.name for r in families] == [f"config={f}-{s}" for s in ("small", "base")
                                              for f in ("llama", "gpt2", "lstm", "bert")]
    _, ladder, sweep = plan(str(ROOT / "experiments" / "scaling_ladder.py"), 1)
    assert sweep["scaling"] is True
    steps = [r.overrides["train.steps"] for r in ladder]
    assert steps == sorted(steps) and steps[-1] > 4 * steps[0]  # Budgets grow with model size.


def test_power_law_fit_recovers_known_exponent():
    compute = np.geomspace(1e12, 1e16, 6)
    a, b = fit_power_law(compute, 40.0 * compute ** -0.07)
    assert a == pytest.approx(40.0, rel=1e-6) and b == pytest.approx(0.07, rel=1e-6)


def _sweep_env(tmp_path):
    return train_env(tmp_path / "cache")


def _sweep(tmp_path, experiment, *flags):
    return [sys.executable, "-m", "llmjax.cli.sweep", experiment,
            f"--workdir={tmp_path / 'sweep'}", *flags]


@pytest.mark.slow
def test_sweep_skips_finished_resumes_interrupted_and_marks_failures(tmp_path):
    experiment = _experiment(tmp_path, {"runs": [
        {"optimizer.learning_rate": 1e-3},
        {"optimizer.learning_rate": 3e-3},
        # Diverges from the start with no checkpoint to return to: fails for real.
        {"optimizer.learning_rate": 1e-2, "train.inject_nan_at": "1,2,3,4,5,6",
         "train.guard_max_rollbacks": 0}]})
    env = _sweep_env(tmp_path)
    sweep_dir = tmp_path / "sweep"
    first = subprocess.Popen(_sweep(tmp_path, experiment), cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second_run = sweep_dir / "runs" / "learning_rate=0.003-inject_nan_at=-guard_max_rollbacks=3"
    names = None
    deadline = time.time() + 300
    while time.time() < deadline:  # Interrupt early in the second run (70 steps of margin).
        manifest = sweep_dir / "sweep.json"
        if manifest.exists():
            names = [r["name"] for r in json.loads(manifest.read_text())["runs"]]
            second_run = sweep_dir / "runs" / names[1]
            metrics = second_run / "metrics.jsonl"
            if metrics.exists() and any(json.loads(line)["step"] >= 10 for line in metrics.read_text().splitlines()
                                        if line.endswith("}")):
                break
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 75, err[-2000:]  # Stopped, nothing failed: rerun to go on.
    assert f"done    {names[0]}" in out and f"preempted {names[1]}" in out
    assert names == ["learning_rate=0.001-inject_nan_at=-guard_max_rollbacks=3",
                     "learning_rate=0.003-inject_nan_at=-guard_max_rollbacks=3",
                     "learning_rate=0.01-inject_nan_at=1,2,3,4,5,6-guard_max_rollbacks=0"]

    again = subprocess.run(_sweep(tmp_path, experiment), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 1, again.stderr[-2000:]
    assert f"skip    {names[0]} (done at step 80)" in again.stdout
    assert f"resume  {names[1]}" in again.stdout and f"done    {names[1]}" in again.stdout
    assert "resuming from checkpoint" in (sweep_dir / "runs" / names[1] / "train.log").read_text()
    assert f"failed  {names[2]}: CheckpointError: the loss diverged" in again.stdout
    assert "sweep: 2 done, 1 failed" in again.stdout
    status = json.loads((sweep_dir / "runs" / names[2] / "status.json").read_text())
    assert status["state"] == "failed" and status["error"].startswith("CheckpointError: the loss diverged")

    report = subprocess.run([sys.executable, "-m", "llmjax.cli.report", str(sweep_dir)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in report.stdout.splitlines()[2:5]}
    for name in names[:2]:
        summary = json.loads((sweep_dir / "runs" / name / "summary.json").read_text())
        assert rows[name][1] == "done" and rows[name][2] == "80"
        assert float(rows[name][4]) == pytest.approx(summary["final_train_loss"], abs=1e-4)
        assert float(rows[name][5]) == pytest.approx(summary["final_val_loss"], abs=1e-4)
    assert rows[names[2]][1] == "failed" and math.isnan(float(rows[names[2]][5]))
    for png in ("loss_curves.png", "final_loss_vs_learning_rate.png"):
        data = (sweep_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert (sweep_dir / "report.txt").read_text().startswith("run")

    # Relaunched with another model: refused before anything starts, and the manifest, which the
    # report reads the runs' overrides from, still describes how they were trained.
    manifest, log = (sweep_dir / "sweep.json").read_text(), (sweep_dir / "runs" / names[0] / "train.log").read_text()
    other = subprocess.run(_sweep(tmp_path, experiment, "--config.model.num_layers=3"), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and other.stderr.startswith(f"error: run {names[0]} in {sweep_dir} was "
                                                             f"trained with another model"), other.stderr
    assert "model.num_layers: 2 -> 3" in other.stderr and "Traceback" not in other.stderr
    assert (sweep_dir / "sweep.json").read_text() == manifest
    assert (sweep_dir / "runs" / names[0] / "train.log").read_text() == log
    # Relaunched with more steps: the finished runs are extended, not skipped.
    longer = subprocess.run(_sweep(tmp_path, experiment, "--config.train.steps=85"), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert f"resume  {names[0]} (changed: train.steps: 80 -> 85)" in longer.stdout, longer.stdout
    assert json.loads((sweep_dir / "runs" / names[0] / "status.json").read_text())["step"] == 85


def _kill_sweep_when(command, env, log, ready, what):
    """Starts the sweep in a session of its own, polls `ready()` and SIGKILLs the whole
    session (the sweep and its training) as soon as it holds, as a dying node would."""
    with open(log, "a") as out:
        sweep = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    deadline = time.time() + 300
    while sweep.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.01)
    assert sweep.poll() is None, f"the sweep ended before {what}: {log.read_text()[-2000:]}"
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()


def _records(workdir):
    """(step, split) of every record in the run's metrics.jsonl, in order."""
    return [(r["step"], r["split"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_sweep_killed_mid_training_and_between_runs_finishes_each_run_once(tmp_path):
    """A sweep of three runs SIGKILLed with its training, at seeded random moments: once while
    a drawn run is at a drawn step of training, once after a drawn run has finished and
    before the next starts; the same command is rerun each time. At the end each run finished
    exactly once (one trainer completed it), at its configured step, with each logged step
    once in its metrics; the sweep directory and sweep.json hold each run once."""
    steps, log_every, eval_every, checkpoint_every = 40, 5, 20, 10
    experiment = _experiment(tmp_path, {"seeds": [0, 1, 2]})
    command = _sweep(tmp_path, experiment, f"--config.train.steps={steps}", f"--config.train.log_every={log_every}",
                     f"--config.train.eval_every={eval_every}", f"--config.checkpoint.every_steps={checkpoint_every}")
    env, runs, log = _sweep_env(tmp_path), tmp_path / "sweep" / "runs", tmp_path / "sweep.log"
    names = ["seed=0", "seed=1", "seed=2"]
    draw = random.Random(5)
    mid_run, mid_step, finished = draw.randrange(3), draw.randrange(log_every, steps, log_every), draw.randrange(2)

    def training():  # status.json's step moves every log_every steps.
        status = runs / names[mid_run] / "status.json"
        if not status.exists():
            return False
        status = json.loads(status.read_text())
        return status["state"] == "running" and mid_step <= status["step"] < steps

    def between():  # The trainer of one run said it is done; the next has no directory yet.
        train_log = runs / names[finished] / "train.log"
        return (train_log.exists() and "done in" in train_log.read_text()
                and not (runs / names[finished + 1]).exists())

    kills = [(training, f"{names[mid_run]} reached step {mid_step}"),
             (between, f"{names[finished]} finished")]
    for ready, what in kills if mid_run <= finished else kills[::-1]:  # In the order the sweep meets them.
        _kill_sweep_when(command, env, log, ready, what)
        if ready is training:  # An async save may not have committed yet when the kill came.
            killed_at = json.loads((runs / names[mid_run] / "status.json").read_text())["step"]
            committed = saved_steps(RunDir(runs / names[mid_run]).checkpoints)
    final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    assert "sweep: 3 done" in final.stdout

    assert sorted(p.name for p in runs.iterdir()) == names
    assert [r["name"] for r in json.loads((tmp_path / "sweep" / "sweep.json").read_text())["runs"]] == names
    expected = [(step, "train") for step in range(log_every, steps + 1, log_every)]
    expected += [(step, "val") for step in range(eval_every, steps + 1, eval_every)]
    for name in names:
        status = json.loads((runs / name / "status.json").read_text())
        assert (status["state"], status["step"]) == ("done", steps), name
        assert sorted(_records(runs / name)) == sorted(expected), name
        lines = (runs / name / "train.log").read_text().splitlines()  # Each start of its trainer logs the config.
        assert lines.count("config:") == (2 if name == names[mid_run] else 1), name
        assert sum(line.startswith("done in ") for line in lines) == 1, name
    assert f"skip    {names[finished]} (done at step {steps})" in final.stdout
    assert mid_step <= killed_at < steps
    assert all(step <= killed_at for step in committed)
    resumed = [line.split()[4] for line in (runs / names[mid_run] / "train.log").read_text().splitlines()
               if line.startswith("resuming from checkpoint step ")]
    assert resumed == ([str(committed[-1])] if committed else [])


def test_scaling_report_fits_the_ladder(tmp_path):
    """Synthetic run directories whose final losses follow L = 30 C^-0.05 exactly: the report
    must recover the exponent from the compute it derives from each run's config."""
    from llmjax.flops import flops_per_token  # noqa: PLC0415
    from llmjax.sweep.report import report  # noqa: PLC0415

    runs = []
    for d_model in (32, 64, 128):
        config = compose("tiny", overrides={"model.d_model": d_model, "model.head_dim": d_model // 4,
                                            "train.steps": 100})
        workdir = tmp_path / "runs" / f"d{d_model}"
        workdir.mkdir(parents=True)
        (workdir / "config.json").write_text(json.dumps(config.to_dict()))
        compute = flops_per_token(config) * 100 * \
            config.train.global_batch_size * config.data.seq_len
        loss = 30.0 * compute ** -0.05
        (workdir / "metrics.jsonl").write_text(
            json.dumps({"step": 100, "split": "train", "loss": loss + 0.1, "tokens_per_sec": 1.0}) + "\n"
            + json.dumps({"step": 100, "split": "val", "loss": loss}) + "\n")
        (workdir / "status.json").write_text(json.dumps({"state": "done", "step": 100}))
        runs.append({"name": f"d{d_model}", "overrides": {"model.d_model": d_model}})
    # The largest model, preempted at step 60 after an evaluation at step 50 far off the curve:
    # its loss is not at the compute it has spent, and is neither fitted nor plotted.
    _synthetic_run(tmp_path / "runs" / "d256", {"model.d_model": 256, "model.head_dim": 64, "train.steps": 100},
                   "preempted", 60, train=[(60, 9.0)], val=[(50, 9.0)])
    runs.append({"name": "d256", "overrides": {"model.d_model": 256}})
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs, "sweep": {"scaling": True}}))
    text, plots = report(tmp_path)
    assert "scaling: final val loss ~ compute^-0.050 (fitted over 3 runs)" in text
    assert "left out of the final-loss plots: d256 (preempted at step 60)" in text
    assert [p.name for p in plots] == ["loss_curves.png", "scaling.png"]
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


FAMILIES_EXPERIMENT = """
from llmjax.presets import compose

def get_config(arg="tiny"):
    return compose(arg, data="stdlib_json", overrides={
        "data.seq_len": 32, "train.steps": 6, "train.global_batch_size": 4, "train.log_every": 3,
        "train.eval_every": 6, "train.eval_batches": 1, "checkpoint.every_steps": 6,
        "optimizer.warmup_steps": 2})

def get_sweep():
    return {"runs": [{"config": "tiny"}, {"config": "lstm-tiny"}, {"config": "bert-tiny"}], "families": True,
            "per_position": True}
"""


@pytest.mark.slow
def test_families_sweep_reports_each_family_and_its_loss_by_position(tmp_path):
    from llmjax.sweep.report import report  # noqa: PLC0415

    experiment = tmp_path / "families.py"
    experiment.write_text(FAMILIES_EXPERIMENT)
    result = subprocess.run(_sweep(tmp_path, str(experiment)), cwd=ROOT, env=_sweep_env(tmp_path),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "sweep"
    for name, family in (("config=tiny", "llama"), ("config=lstm-tiny", "lstm"), ("config=bert-tiny", "bert")):
        assert json.loads((sweep_dir / "runs" / name / "config.json").read_text())["model"]["family"] == family
    logged = []
    text, plots = report(sweep_dir, log=logged.append)
    assert sorted(logged) == ["evaluating per-position losses of config=lstm-tiny ...",
                              "evaluating per-position losses of config=tiny ..."]
    family_lines = {line.split()[0]: line.split() for line in text.splitlines()
                    if line.split()[:1] in (["llama"], ["lstm"], ["bert"])}
    # BERT's MLM loss is in the table of other objectives, beside its accuracy, and in no plot.
    bert = json.loads((sweep_dir / "runs" / "config=bert-tiny" / "summary.json").read_text())
    assert family_lines["bert"][1] == "mlm"
    assert float(family_lines["bert"][4]) == pytest.approx(bert["final_val_loss"], abs=1e-4)
    assert text.index("other objectives") < text.rindex("config=bert-tiny")
    for family, name in (("llama", "config=tiny"), ("lstm", "config=lstm-tiny")):
        summary = json.loads((sweep_dir / "runs" / name / "summary.json").read_text())
        assert float(family_lines[family][3]) == pytest.approx(summary["final_val_loss"], abs=1e-4)
        evaluated = json.loads((sweep_dir / "runs" / name / "per_position.json").read_text())
        curve = evaluated["per_position"]["stdlib"]
        # The per-position losses pool to the loss of the same evaluation (whose batch size is
        # rounded up to this process's 8 devices, so its batches are not the run's own).
        pooled = sum(loss * n for loss, n in zip(curve["loss"], curve["tokens"]) if n) / sum(curve["tokens"])
        assert evaluated["step"] == 6 and len(curve["loss"]) == 32
        assert pooled == pytest.approx(evaluated["results"]["stdlib"]["loss"], rel=1e-5)
    assert [p.name for p in plots][-2:] == ["loss_vs_compute_by_family.png", "loss_by_position.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    again = []
    report(sweep_dir, log=again.append)
    assert again == []  # Evaluated once; the report reads per_position.json after that.
    # Of an earlier checkpoint than the run's latest (the sweep was extended since): evaluated again.
    stale = sweep_dir / "runs" / "config=tiny" / "per_position.json"
    stale.write_text(json.dumps(json.loads(stale.read_text()) | {"step": 3}))
    report(sweep_dir, log=again.append)
    assert again == ["evaluating per-position losses of config=tiny ..."]
    assert json.loads(stale.read_text())["step"] == 6


def test_slurm_array_script(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "llmjax.cli.sweep", str(ROOT / "experiments" / "lr_sweep.py"),
         f"--workdir={tmp_path}", "--cluster=slurm", "--dry_run", "--partition=gpu",
         "--account=lab", "--gpus=1", "--time=02:00:00"],
        cwd=ROOT, env=_sweep_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    script = result.stdout[result.stdout.index("#!/bin/bash"):]
    for line in ("#SBATCH --array=0-5%6", "#SBATCH --partition=gpu", "#SBATCH --account=lab",
                 "#SBATCH --gpus=1", "#SBATCH --time=02:00:00"):
        assert line in script
    assert f"--workdir={tmp_path} --run_index=$SLURM_ARRAY_TASK_ID" in script
    assert not (tmp_path / "sweep.json").exists(), "a dry run writes nothing"


def test_slurm_submission_makes_the_directory_of_the_tasks_output(tmp_path):
    """SLURM does not create the directory of `#SBATCH --output`: a stand-in sbatch refuses the
    script, as every task of the array would fail, unless it exists when the script is handed over."""
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text('#!/bin/bash\nout=$(sed -n "s/^#SBATCH --output=//p" "$1")\n'
                    '[ -d "$(dirname "$out")" ] || { echo "sbatch: error: no directory for $out" >&2; exit 1; }\n'
                    'echo "Submitted batch job 42"\n')
    fake.chmod(0o755)
    env = _sweep_env(tmp_path)
    env["PATH"] = f"{fake.parent}:{env['PATH']}"
    experiment = _experiment(tmp_path, {"grid": {"optimizer.learning_rate": [1e-3, 3e-3]}})
    result = subprocess.run(_sweep(tmp_path, experiment, "--cluster=slurm"), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Submitted batch job 42" in result.stdout, result.stderr[-2000:]
    assert (tmp_path / "sweep" / "runs").is_dir() and (tmp_path / "sweep" / "sweep.json").exists()


def test_config_command_prints_derived_figures(tmp_path):
    command = [sys.executable, "-m", "llmjax.cli.config", "--config=configs/llama3_8b.py", "--config.train.steps=10"]
    result = subprocess.run([*command, "--config.optimizer.warmup_steps=1", "--config.mesh.ici.fsdp=8"], cwd=ROOT,
                            env=_sweep_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parameters:            8,030,261,248" in result.stdout
    assert "tokens per step:       4,096" in result.stdout  # 16 sequences x 256 tokens.
    assert "tokens in the run:     40,960" in result.stdout
    assert "not runnable on the 1 local devices" in result.stdout  # A cluster's mesh: said, not an error.
    # A config no device count can run (warmup 40 of 10 steps) is an error, not a description.
    invalid = subprocess.run(command, cwd=ROOT, env=_sweep_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert invalid.returncode == 2 and invalid.stderr == \
        "error: config.optimizer.warmup_steps=40: must be in [0, train.steps=10).\n"


def test_config_overrides_apply_to_every_run_of_a_sweep(tmp_path):
    experiment = str(ROOT / "experiments" / "lr_sweep.py")
    dry = subprocess.run(_sweep(tmp_path, experiment, "--dry_run", "--config.train.steps=30",
                                "--config.model.remat=full"),
                         cwd=ROOT, env=_sweep_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-2000:]
    runs = [line for line in dry.stdout.splitlines() if "learning_rate=" in line and "seed=" in line]
    assert len(runs) == 6
    assert all("'train.steps': 30" in line and "'model.remat': 'full'" in line for line in runs), runs
    slurm = subprocess.run(_sweep(tmp_path, experiment, "--dry_run", "--cluster=slurm", "--config.train.steps=30"),
                           cwd=ROOT, env=_sweep_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert "--config.train.steps=30 --run_index=$SLURM_ARRAY_TASK_ID" in slurm.stdout  # Array tasks too.
    swept = subprocess.run(_sweep(tmp_path, experiment, "--dry_run", "--config.optimizer.learning_rate=0.1"),
                           cwd=ROOT, env=_sweep_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert swept.returncode == 2 and "--config.optimizer.learning_rate is varied by the sweep" in swept.stderr


def test_final_loss_is_plotted_per_optimizer_against_the_learning_rate(tmp_path):
    rows = [{"overrides": {"optimizer.name": name, "optimizer.learning_rate": lr, "seed": seed},
             "final_val_loss": loss + seed * 0.01, "train_loss": math.nan}
            for name, losses in (("adamw", (4.0, 3.8, 3.9)), ("muon", (3.9, 3.7, 3.6)))
            for lr, loss in zip((1e-3, 3e-3, 1e-2), losses) for seed in (0, 1)]
    assert report.categories(rows, "optimizer.learning_rate") == ["optimizer.name"]
    assert report.categories(rows, "optimizer.name") == ["optimizer.learning_rate"]
    lines = report.plot_final_vs(rows, "optimizer.learning_rate", tmp_path / "lr.png")
    assert list(lines) == ["name=adamw", "name=muon"] and (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


def test_final_loss_is_plotted_per_weight_decay_against_the_learning_rate(tmp_path):
    """A grid of two numbers: the mean over weight decays favours 3e-3 (3.75 < 4.0), though the
    best run (3.0) is at 1e-3 without weight decay, so each weight decay gets its own line; a
    key whose values no two runs share (a random draw) makes no lines."""
    losses = {(1e-3, 0.0): 3.0, (1e-3, 0.1): 5.0, (3e-3, 0.0): 4.0, (3e-3, 0.1): 3.5}
    rows = [{"overrides": {"optimizer.learning_rate": lr, "optimizer.weight_decay": wd}, "final_val_loss": loss}
            for (lr, wd), loss in losses.items()]
    assert report.plot_final_vs(rows, "optimizer.learning_rate", tmp_path / "lr.png") == {
        "weight_decay=0": [(1e-3, 3.0), (3e-3, 4.0)], "weight_decay=0.1": [(1e-3, 5.0), (3e-3, 3.5)]}
    drawn = [{"overrides": {"optimizer.learning_rate": 1e-3 * (1 + i), "model.num_layers": 1 + i % 2}} for i in range(4)]
    assert report.categories(drawn, "model.num_layers") == [] and report.categories(drawn, "optimizer.learning_rate") == [
        "model.num_layers"]
    # Drawn at random, each draw repeats over the seeds: still no line per draw.
    seeded = [{"overrides": r["overrides"] | {"seed": seed}} for r in drawn for seed in (0, 1)]
    assert report.categories(seeded, "model.num_layers", drawn=("optimizer.learning_rate",)) == []


def _synthetic_run(workdir, overrides, state, step, train, val):
    """A run directory as training leaves it: config, status, and (step, loss) records."""
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(compose("tiny", overrides=overrides).to_dict()))
    (workdir / "status.json").write_text(json.dumps({"state": state, "step": step}))
    (workdir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "split": split, "loss": loss, "tokens_per_sec": 1.0}) + "\n"
        for split, records in (("train", train), ("val", val)) for s, loss in records))


def test_final_loss_plots_and_table_tell_unfinished_runs_apart(tmp_path):
    """Two finished runs of a learning-rate sweep, one preempted at step 152 after an evaluation
    at step 100 and one failed before any: only the finished runs' step-300 losses are plotted
    as final (never a train loss in a val loss's place), the table says at which step the
    preempted run's val loss was measured, and the report names the runs left out."""
    from llmjax.sweep.report import report as write_report  # noqa: PLC0415

    runs = {"lr=0.001": (1e-3, "done", 300, [(150, 4.5), (300, 4.0)], [(100, 4.6), (300, 4.3)]),
            "lr=0.003": (3e-3, "done", 300, [(150, 4.0), (300, 3.5)], [(100, 4.2), (300, 3.9)]),
            "lr=0.01": (1e-2, "preempted", 152, [(150, 4.1)], [(100, 4.7461)]),
            "lr=0.03": (3e-2, "failed", 63, [(60, 5.0868)], [])}
    for name, (lr, state, step, train, val) in runs.items():
        _synthetic_run(tmp_path / "runs" / name, {"optimizer.learning_rate": lr, "train.steps": 300},
                       state, step, train, val)
    (tmp_path / "sweep.json").write_text(json.dumps(
        {"runs": [{"name": name, "overrides": {"optimizer.learning_rate": lr}} for name, (lr, *_) in runs.items()],
         "sweep": {}}))
    text, plots = write_report(tmp_path)
    table = {line.split()[0]: line.split() for line in text.splitlines()[2:6]}
    assert table["lr=0.001"][2] == "300" and table["lr=0.001"][5] == "4.3000"
    assert table["lr=0.01"][1:3] == ["preempted", "152"] and table["lr=0.01"][5] == "4.7461@100"
    assert table["lr=0.03"][1:3] == ["failed", "63"] and table["lr=0.03"][5] == "nan"
    assert "left out of the final-loss plots: lr=0.01 (preempted at step 152)" in text
    assert "left out of the final-loss plots: lr=0.03 (failed at step 63)" in text
    assert [p.name for p in plots] == ["loss_curves.png", "final_loss_vs_learning_rate.png"]
    rows, _ = report.collect(tmp_path)
    assert report.plot_final_vs(rows, "optimizer.learning_rate", tmp_path / "lr.png") == {
        "mean": [(1e-3, 4.3), (3e-3, 3.9)]}


def test_a_damaged_status_or_metrics_line_is_shown_not_a_traceback(tmp_path):
    """status.json cut short and a metrics line that is JSON but no record (hand-edited): the
    report shows the run as damaged and reads the records that are records."""
    from llmjax.sweep.report import report as write_report  # noqa: PLC0415

    for name in ("ok", "cut"):
        _synthetic_run(tmp_path / "runs" / name, {"train.steps": 300}, "done", 300, [(300, 4.0)], [(300, 4.3)])
    (tmp_path / "runs" / "cut" / "status.json").write_text('{"state": "do')
    with (tmp_path / "runs" / "cut" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3}\n[1, 2]\n')
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": [{"name": n, "overrides": {}} for n in ("ok", "cut")],
                                                     "sweep": {}}))
    text, _ = write_report(tmp_path)
    table = {line.split()[0]: line.split() for line in text.splitlines()[2:4]}
    assert table["cut"][1] == "damaged" and table["cut"][4:6] == ["4.0000", "4.3000"] and table["ok"][1] == "done"


def test_a_damaged_config_or_manifest_is_one_line_not_a_traceback(tmp_path):
    """A run's config.json cut short: the report shows the others in full and that run
    without the figures its config gives, saying it is damaged. sweep.json cut short: one
    error line."""
    from llmjax.sweep.report import report as write_report  # noqa: PLC0415

    for name in ("ok", "cut"):
        _synthetic_run(tmp_path / "runs" / name, {"train.steps": 300}, "done", 300, [(300, 4.0)], [(300, 4.3)])
    (tmp_path / "runs" / "cut" / "config.json").write_text('{"model": {"d_mod')
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": [{"name": n, "overrides": {}} for n in ("ok", "cut")],
                                                     "sweep": {}}))
    text, _ = write_report(tmp_path)
    table = {line.split()[0]: line.split() for line in text.splitlines()[2:4]}
    assert table["cut"][1:4] == ["done", "300", "0"] and table["cut"][5] == "4.3000"
    assert table["ok"][3] != "0"  # Tokens, from the config.
    assert f"damaged: cut: {tmp_path / 'runs' / 'cut' / 'config.json'} is not valid JSON" in text
    (tmp_path / "sweep.json").write_text('{"runs": [{"name": "ok", "overri')
    damaged = subprocess.run([sys.executable, "-m", "llmjax.cli.report", str(tmp_path)], cwd=ROOT,
                             env=_sweep_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert damaged.returncode == 2 and damaged.stderr.startswith(
        f"error: {tmp_path / 'sweep.json'} is not valid JSON") and damaged.stderr.count("\n") == 1, damaged.stderr


def test_moe_report_draws_loss_against_compute_and_routing_per_layer(tmp_path):
    """A dense and an MoE run (synthetic records, with routing metrics named as the train step
    names them): the report adds loss against compute and the routing plot."""
    import numpy as np  # noqa: PLC0415

    from llmjax.model.layers import moe_stats  # noqa: PLC0415
    from llmjax.sweep import routing  # noqa: PLC0415
    from llmjax.sweep.report import report  # noqa: PLC0415

    runs = []
    for name, preset in (("dense", "tiny"), ("moe", "tiny_moe")):
        config = compose(preset, overrides={"train.steps": 20})
        workdir = tmp_path / "runs" / name
        workdir.mkdir(parents=True)
        (workdir / "config.json").write_text(json.dumps(config.to_dict()))
        lines = []
        for step in (10, 20):
            record = {"step": step, "split": "train", "loss": 5.0 - step / 10, "tokens_per_sec": 1.0}
            if name == "moe":  # Layer 0: 4 experts of which one takes half the pairs; layer 1 balanced.
                summary = {"moe_aux_loss": 0.0, "moe_dropped_fraction": np.array([0.1 * step / 10, 0.0]),
                           "moe_expert_fraction": np.array([[0.5, 0.2, 0.2, 0.1], [0.25] * 4])}
                record |= {k: float(v) for k, v in moe_stats.scalar_metrics(summary, config.model).items()}
            lines.append(json.dumps(record))
        lines.append(json.dumps({"step": 20, "split": "val", "loss": 3.2}))
        (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (workdir / "status.json").write_text(json.dumps({"state": "done", "step": 20}))
        runs.append({"name": name, "overrides": {}})
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs, "sweep": {}}))
    text, plots = report(tmp_path)
    assert [p.name for p in plots] == ["loss_curves.png", "loss_vs_compute.png", "routing.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    curves = routing.curves([json.loads(line) for line in (tmp_path / "runs" / "moe" / "metrics.jsonl").read_text()
                             .splitlines() if '"train"' in line])
    assert curves[0] == [(10, pytest.approx(2.0), pytest.approx(0.1)), (20, pytest.approx(2.0), pytest.approx(0.2))]
    assert curves[1][0][1:] == (pytest.approx(1.0), 0.0)


def _finished_sweep(sweep_dir, experiment, overrides):
    """The sweep directory a finished launch of `experiment` with the command line's
    `overrides` leaves (synthetic: each new run's config, status and a last checkpoint's marker)."""
    _, runs, sweep = plan(experiment, 1, overrides, manifest.existing(sweep_dir))
    for run in runs:
        run_directory = RunDir(launch.run_dir(sweep_dir, run))
        if run_directory.path.exists():
            continue
        run_directory.write_config(run.config)
        run_directory.write_status("done", run.config.train.steps)
        (run_directory.checkpoints / str(run.config.train.steps)).mkdir(parents=True)
        (run_directory.checkpoints / str(run.config.train.steps) / "_CHECKPOINT_METADATA").write_text("{}")
    manifest.write(sweep_dir, experiment, runs, sweep)
    return runs


def test_relaunch_with_fewer_steps_is_refused_before_anything_is_written(tmp_path):
    """A sweep trained with --config.train.steps=100, relaunched without it (80 steps): each
    trainer would refuse, so the sweep refuses first, with the trainer's own check, and leaves
    the manifest and every run as they were (they used to be marked failed)."""
    experiment = _experiment(tmp_path, {"grid": {"optimizer.learning_rate": [1e-3, 3e-3]}})
    sweep_dir = tmp_path / "sweep"
    runs = _finished_sweep(sweep_dir, experiment, {"train.steps": 100})
    before = {p: p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file()}
    again = subprocess.run(_sweep(tmp_path, experiment), cwd=ROOT, env=_sweep_env(tmp_path), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 2 and again.stderr == (
        f"error: run {runs[0].name}: config.train.steps=80: the run in {sweep_dir / 'runs' / runs[0].name} has "
        f"reached step 100 already; give train.steps >= 100 to continue it, or train a shorter run in a new "
        f"--workdir.\n"), again.stderr
    assert {p: p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file()} == before


def test_a_trainer_that_refuses_to_start_leaves_a_finished_run_done(tmp_path, monkeypatch):
    """A done run launched again (its config changed) whose trainer exits with an error before
    starting: the sweep reports the launch failed, but the run's record stays done."""
    experiment = _experiment(tmp_path, {"grid": {"optimizer.learning_rate": [1e-3]}})
    sweep_dir = tmp_path / "sweep"
    run, = _finished_sweep(sweep_dir, experiment, {})
    status = (launch.run_dir(sweep_dir, run) / "status.json").read_text()
    monkeypatch.setattr(launch, "train_command", lambda *_: [
        sys.executable, "-c", "import sys; print('error: config.x=1: refused'); sys.exit(2)"])
    logged = []
    states = launch.run_local(experiment, sweep_dir, [run], 1, {run.name: {"train.steps": (80, 90)}}, logged.append)
    assert states == {run.name: "failed"} and f"failed  {run.name}: error: config.x=1: refused" in logged
    assert (launch.run_dir(sweep_dir, run) / "status.json").read_text() == status
    # A preempted run whose trainer fails before its loop (which would record it) is recorded
    # failed, with the error; one that another training holds by then keeps that one's status.
    RunDir(launch.run_dir(sweep_dir, run)).write_status("preempted", 40)
    launch.run_local(experiment, sweep_dir, [run], 1, {run.name: {}}, logged.append)
    status = RunDir(launch.run_dir(sweep_dir, run)).status()
    assert (status["state"], status["error"]) == ("failed", "error: config.x=1: refused"), status
    from llmjax import workdir_lock  # noqa: PLC0415

    RunDir(launch.run_dir(sweep_dir, run)).write_status("running", 50)
    with workdir_lock.held(RunDir(launch.run_dir(sweep_dir, run))):
        launch.run_local(experiment, sweep_dir, [run], 1, {run.name: {}}, logged.append)
        assert RunDir(launch.run_dir(sweep_dir, run)).status()["state"] == "running"


def _rewrite(experiment, sweep):
    """The experiment file of `_experiment`, with another sweep."""
    text = open(experiment).read()
    open(experiment, "w").write(text[:text.index("def get_sweep")] + f"def get_sweep():\n    return {sweep!r}\n")


def test_a_grown_sweep_keeps_the_names_of_the_runs_it_has(tmp_path):
    """Seeds added to a finished learning-rate sweep: the seed-0 runs are the runs already
    trained (seed 0 is the default), so they keep their directories instead of being renamed
    `learning_rate=0.001-seed=0` and trained again; the new runs get new names, and the report
    shows all four."""
    experiment = _experiment(tmp_path, {"grid": {"optimizer.learning_rate": [1e-3, 3e-3]}})
    sweep_dir = tmp_path / "sweep"
    old = [r.name for r in _finished_sweep(sweep_dir, experiment, {})]
    assert old == ["learning_rate=0.001", "learning_rate=0.003"]
    _rewrite(experiment, {"grid": {"optimizer.learning_rate": [1e-3, 3e-3]}, "seeds": [0, 1]})
    dry = subprocess.run(_sweep(tmp_path, experiment, "--dry_run"), cwd=ROOT, env=_sweep_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    listed = [line.split()[0] for line in dry.stdout.splitlines() if line.startswith("  learning_rate=")]
    assert listed == ["learning_rate=0.001", "learning_rate=0.001-seed=1", "learning_rate=0.003",
                      "learning_rate=0.003-seed=1"]
    _finished_sweep(sweep_dir, experiment, {})
    rows, _ = report.collect(sweep_dir)
    assert sorted(r["name"] for r in rows) == sorted(listed) and {r["status"] for r in rows} == {"done"}


def test_more_random_draws_keep_the_first_draws_runs(tmp_path):
    experiment = _experiment(tmp_path, {"random": {"optimizer.learning_rate": ("log_uniform", 1e-4, 1e-2),
                                                   "model.num_layers": [1, 2]}, "num_random": 3})
    sweep_dir = tmp_path / "sweep"
    old = [r.name for r in _finished_sweep(sweep_dir, experiment, {})]
    _rewrite(experiment, {"random": {"optimizer.learning_rate": ("log_uniform", 1e-4, 1e-2),
                                     "model.num_layers": [1, 2]}, "num_random": 6})
    new = [r.name for r in plan(experiment, 1, None, manifest.existing(sweep_dir))[1]]
    assert new[:3] == old and len(set(new)) == 6


def test_a_relaunch_recognises_runs_of_a_manifest_without_swept_keys(tmp_path):
    """sweep.json as written before it recorded which overrides the sweep set: the keys alike
    in every run (--config.train.steps=100 here) are taken for the command line's, so a
    relaunch without them plans the same runs (and is then refused for its fewer steps)."""
    experiment = _experiment(tmp_path, {"grid": {"optimizer.learning_rate": [1e-3, 3e-3]}, "seeds": [0, 1]})
    sweep_dir = tmp_path / "sweep"
    old = [r.name for r in _finished_sweep(sweep_dir, experiment, {"train.steps": 100})]
    legacy = json.loads((sweep_dir / "sweep.json").read_text())
    legacy["runs"] = [{k: v for k, v in r.items() if k != "swept"} for r in legacy["runs"]]
    (sweep_dir / "sweep.json").write_text(json.dumps(legacy))
    _, runs, _ = plan(experiment, 1, None, manifest.existing(sweep_dir))
    assert [r.name for r in runs] == old
    with pytest.raises(SweepError, match="has reached step 100 already"):
        launch.check_workdirs(sweep_dir, runs)


def test_a_new_run_never_takes_the_name_of_another_run(tmp_path):
    """Runs trained with weight decay 0.5, then a sweep of the same rates without it: the new
    runs are other runs, so they get their own directories (the name and a digest), and the
    manifest keeps the earlier runs for the report."""
    experiment = _experiment(tmp_path, {"runs": [{"optimizer.learning_rate": lr, "optimizer.weight_decay": 0.5}
                                                 for lr in (1e-3, 3e-3)]})
    sweep_dir = tmp_path / "sweep"
    old = [r.name for r in _finished_sweep(sweep_dir, experiment, {})]
    _rewrite(experiment, {"grid": {"optimizer.learning_rate": [1e-3, 3e-3]}})
    _, runs, sweep = plan(experiment, 1, None, manifest.existing(sweep_dir))
    assert [r.name[:-9] for r in runs] == old and not {r.name for r in runs} & set(old)
    assert [r.name for r in plan(experiment, 1, None, manifest.existing(sweep_dir))[1]] == [r.name for r in runs]
    manifest.write(sweep_dir, experiment, runs, sweep)
    assert [r["name"] for r in manifest.read(sweep_dir)["runs"]] == [r.name for r in runs] + old


def test_long_values_make_names_that_fit_and_stay_apart(tmp_path):
    """A 260-character string in a run's overrides made a directory name over the filesystem's
    limit: an OSError mid-sweep, after the runs before it had trained."""
    experiment = _experiment(tmp_path, {"runs": [{"tracking.wandb_project": "p" * 260},
                                                 {"tracking.wandb_project": "p" * 259 + "q"}]})
    names = [r.name for r in plan(experiment, 1)[1]]
    assert all(len(n) <= 120 for n in names) and len(set(names)) == 2
    assert names == [r.name for r in plan(experiment, 1)[1]]  # The same at every launch.
    for name in names:
        (tmp_path / "runs" / name).mkdir(parents=True)


def test_a_sweep_that_dies_of_an_error_stops_its_trainings(tmp_path, monkeypatch):
    """--parallel 2: the first run trains while the second cannot make its directory; the
    error ends the sweep, and the first training with it (it trained on, orphaned)."""
    from llmjax.sweep.expand import Run  # noqa: PLC0415

    started = []
    popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
    monkeypatch.setattr(launch, "train_command", lambda *_: [sys.executable, "-c", "import time; time.sleep(120)"])
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "blocked").write_text("")
    runs = [Run("first", {}), Run("blocked/second", {})]
    try:
        with pytest.raises(OSError):
            launch.run_local("exp.py", tmp_path, runs, 2, {r.name: {} for r in runs}, log=lambda _: None)
        assert len(started) == 1 and started[0].poll() == -signal.SIGTERM
    finally:
        for process in started:
            process.kill()
            process.wait()


def test_a_sweep_launched_here_beside_a_training_of_one_of_its_runs_is_refused(tmp_path):
    """A second launch would start that run's trainer, which the workdir lock refuses, and
    record the running run as failed: the sweep refuses first. A SLURM launch, whose job may
    start after the training ends, is not refused for it."""
    from llmjax import workdir_lock  # noqa: PLC0415

    experiment = _experiment(tmp_path, {"grid": {"optimizer.learning_rate": [1e-3, 3e-3]}})
    sweep_dir = tmp_path / "sweep"
    runs = _finished_sweep(sweep_dir, experiment, {})
    with workdir_lock.held(RunDir(launch.run_dir(sweep_dir, runs[1]))):
        with pytest.raises(SweepError, match=f"run {runs[1].name}: --workdir .* another training is running in it"):
            launch.check_workdirs(sweep_dir, runs)
        launch.check_workdirs(sweep_dir, runs, local=False)
    launch.check_workdirs(sweep_dir, runs)


def test_runs_a_manifest_does_not_record_keep_their_names(tmp_path):
    """Without sweep.json (deleted to be written anew, or a --run_index launch, which writes
    none) a run directory is the run its name says: planned again, it resumes, not retrains."""
    experiment = _experiment(tmp_path, {"grid": {"optimizer.learning_rate": [1e-3, 3e-3]}, "seeds": [0, 1]})
    sweep_dir = tmp_path / "sweep"
    old = [r.name for r in _finished_sweep(sweep_dir, experiment, {})]
    (sweep_dir / "sweep.json").unlink()
    assert [r.name for r in plan(experiment, 1, None, manifest.existing(sweep_dir))[1]] == old
