"""Running a sweep's runs: here, N at a time, or as a SLURM array job.

Each run is an ordinary `llmjax-train` in its own workdir `SWEEP_DIR/runs/NAME`, so
everything a single run does (checkpoints, resume, status.json) works per run. Launching again
skips runs that are done with the config asked for now and reruns the others, which resume
from their checkpoints (a longer `train.steps` extends a finished run). A relaunch that would
give a run another model, objective, data or seed is refused before anything starts or is
written: the report would otherwise show the new overrides beside results of the old ones.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmjax import child_processes
from llmjax.sweep.expand import CONFIG_ARG, Run, SweepError
from llmjax.errors import EXIT_PREEMPTED
from llmjax.rundir import RunDir, WorkdirError, identity_changes, shown_changes, write_json
from llmjax.slurm import sbatch_script



def _value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def train_command(experiment: str, workdir: Path, overrides: dict) -> list[str]:
    config = f"{experiment}:{overrides[CONFIG_ARG]}" if CONFIG_ARG in overrides else experiment
    return [sys.executable, "-m", "llmjax.cli.train", f"--config={config}", f"--workdir={workdir}",
            *(f"--config.{k}={_value(v)}" for k, v in overrides.items() if k != CONFIG_ARG)]


def run_dir(sweep_dir: Path, run: Run) -> Path:
    return sweep_dir / "runs" / run.name


def check_workdirs(sweep_dir: Path, runs: list[Run]) -> dict[str, dict]:
    """{run name: its config changes against the run already in its workdir ({} for none)};
    refuses a workdir that holds another model, objective, data or seed, or that `RunDir.check`
    refuses."""
    changes = {}
    for run in runs:
        run_directory = RunDir(run_dir(sweep_dir, run))
        if conflicts := identity_changes(run_directory.changes(run.config)):
            raise SweepError(f"run {run.name} in {sweep_dir} was trained with another model/data/seed "
                             f"than the sweep now asks for ({shown_changes(conflicts)}); relaunch into a new "
                             f"--workdir, or launch with the experiment and overrides it ran with.")
        try:
            changes[run.name] = run_directory.check(run.config)
        except WorkdirError as error:
            raise SweepError(f"run {run.name}: {error}") from None
    return changes


def write_manifest(sweep_dir: Path, experiment: str, runs: list[Run], sweep: dict) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"experiment": str(Path(experiment).resolve()), "sweep": sweep,
                "runs": [{"name": r.name, "overrides": r.overrides} for r in runs]}
    write_json(sweep_dir / "sweep.json", manifest, indent=1, default=str)  # Whole, even if killed.


def _last_error_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":")[0]]
    return (errors or lines or ["no output"])[-1].strip()


def run_local(experiment: str, sweep_dir: Path, runs: list[Run], parallel: int, changes: dict,
              log=print) -> dict:
    """Runs what is not done yet with its config (`changes`, from `check_workdirs`), `parallel`
    at a time; returns {name: final state}. SIGTERM or Ctrl-C is passed on to the running
    trainings, which checkpoint and stop."""
    states = {}
    todo = []
    for run in runs:
        status = RunDir(run_dir(sweep_dir, run)).status()
        if status["state"] == "done" and not changes[run.name]:
            log(f"skip    {run.name} (done at step {status['step']})")
            states[run.name] = "done"
        else:
            todo.append(run)
    active: dict[str, tuple[subprocess.Popen, Path, object]] = {}
    stopping = []

    def forward(signum, _frame):
        stopping.append(signum)
        for process, _, _ in active.values():
            process.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while todo or active:
            while todo and len(active) < parallel and not stopping:
                run = todo.pop(0)
                workdir = run_dir(sweep_dir, run)
                workdir.mkdir(parents=True, exist_ok=True)
                resumed = RunDir(workdir).checkpoints.is_dir()
                changed = shown_changes(changes[run.name], limit=None)
                log(f"{'resume' if resumed else 'start'}  {run.name}" + (f" (changed: {changed})" if changed else ""))
                out = open(workdir / "train.log", "a")
                process = child_processes.start(train_command(experiment, workdir, run.overrides),
                                                stdout=out, stderr=subprocess.STDOUT)
                active[run.name] = (process, workdir, out)
            if stopping and not active:
                break
            for name, (process, workdir, out) in list(active.items()):
                if process.poll() is None:
                    continue
                out.close()
                del active[name]
                code = process.returncode
                if code == 0:
                    states[name] = "done"
                elif code == EXIT_PREEMPTED or (stopping and -code in (signal.SIGTERM, signal.SIGINT)):
                    states[name] = "preempted"  # Or stopped before it could catch the signal: rerun resumes.
                else:  # The trainer records its own failures; a crash may not have.
                    status = RunDir(workdir).status()
                    if status["state"] != "failed":
                        status["error"] = (f"killed by {signal.Signals(-code).name}" if code < 0 else
                                           _last_error_line(workdir / "train.log"))
                        RunDir(workdir).write_status("failed", status["step"], status["error"])
                    error = status["error"]
                    states[name] = "failed"
                log(f"{states[name]:7} {name}" + (f": {error}" if states[name] == "failed" else ""))
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for run in todo:
        states.setdefault(run.name, "not started")
    return states


def slurm_script(experiment: str, sweep_dir: Path, runs: list[Run], slurm: dict) -> str:
    """An sbatch array job: task i runs `llmjax-sweep ... --run_index=i` (which resumes or
    skips like a local launch)."""
    directives = [("job-name", slurm.get("job_name", "llmjax-sweep")),
                  ("array", f"0-{len(runs) - 1}%{slurm.get('max_parallel', len(runs))}"),
                  ("output", f"{sweep_dir}/runs/slurm-%A_%a.out"), ("time", slurm.get("time", "24:00:00")),
                  ("ntasks", 1), ("partition", slurm.get("partition")), ("account", slurm.get("account")),
                  ("gpus", slurm.get("gpus"))]
    command = [sys.executable, "-m", "llmjax.cli.sweep", str(Path(experiment).resolve()),
               f"--workdir={sweep_dir}", *slurm.get("config_args", [])]
    return sbatch_script(directives, ["srun " + shlex.join(command) + " --run_index=$SLURM_ARRAY_TASK_ID"])
