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
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmjax import child_processes, workdir_lock
from llmjax.sweep import SweepError
from llmjax.sweep.expand import CONFIG_ARG, Run
from llmjax.errors import EXIT_PREEMPTED, FlagError
from llmjax.rundir import RunDir, WorkdirError, identity_changes, shown_changes
from llmjax.slurm import sbatch_script



def _value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def train_command(experiment: str, workdir: Path, overrides: dict) -> list[str]:
    config = f"{experiment}:{overrides[CONFIG_ARG]}" if CONFIG_ARG in overrides else experiment
    return [sys.executable, "-m", "llmjax.cli.train", f"--config={config}", f"--workdir={workdir}",
            *(f"--config.{k}={_value(v)}" for k, v in overrides.items() if k != CONFIG_ARG)]


def run_dir(sweep_dir: Path, run: Run) -> Path:
    return sweep_dir / "runs" / run.name


def check_workdirs(sweep_dir: Path, runs: list[Run], local: bool = True) -> dict[str, dict]:
    """{run name: its config changes against the run already in its workdir ({} for none)};
    refuses a workdir that holds another model, objective, data or seed, or that `RunDir.check`
    refuses, and (`local`: trained here, now) one a training holds: a second launch of a sweep
    would record its running runs as failed. A queued SLURM job may start once they end."""
    changes = {}
    for run in runs:
        run_directory = RunDir(run_dir(sweep_dir, run))
        if conflicts := identity_changes(run_directory.changes(run.config)):
            raise SweepError(f"run {run.name} in {sweep_dir} was trained with another model/data/seed "
                             f"than the sweep now asks for ({shown_changes(conflicts)}); relaunch into a new "
                             f"--workdir, or launch with the experiment and overrides it ran with.")
        try:
            changes[run.name] = run_directory.check(run.config)
            if local:
                workdir_lock.check_free(run_directory)
        except WorkdirError as error:
            raise SweepError(f"run {run.name}: {error}") from None
    return changes


def _last_error_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":")[0]]
    return (errors or lines or ["no output"])[-1].strip()


def _record_failure(workdir: Path, code: int, launched: dict) -> str:
    """The error of a training that exited with `code`, recorded in its status.json unless the
    trainer did so itself, or it left a finished run (it refused to start, e.g. asked for fewer
    steps than the run has: the run stays done and its results stay in the report), or another
    training holds the workdir (started there since the sweep's check: the status is that
    training's). A crash before the trainer's loop writes nothing, so a preempted or failed run
    is recorded failed with this error."""
    status = RunDir(workdir).status()
    error = f"killed by {signal.Signals(-code).name}" if code < 0 else _last_error_line(workdir / "train.log")
    try:
        workdir_lock.check_free(RunDir(workdir))
    except WorkdirError:
        return error
    untouched = status == launched
    if status["state"] == "failed" and not untouched:
        return status.get("error", error)
    if not (untouched and status["state"] == "done"):
        RunDir(workdir).write_status("failed", status["step"], error)
    return error


def _stop(active: dict, grace: float = 60.0) -> None:
    """SIGTERM to every training still running (each checkpoints and stops), SIGKILL to any
    still running `grace` seconds later: a sweep that dies of an error leaves no training
    behind, training on with no one to record how it ends."""
    for process, _, _ in active.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process, _, out in active.values():
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out.close()


def run_local(experiment: str, sweep_dir: Path, runs: list[Run], parallel: int, changes: dict,
              log=print) -> dict:
    """Runs what is not done yet with its config (`changes`, from `check_workdirs`), `parallel`
    at a time; returns {name: final state}. SIGTERM or Ctrl-C is passed on to the running
    trainings, which checkpoint and stop; so is an exception that ends the sweep (`_stop`)."""
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
    launched = {}  # {name: its status.json as it was when its training started}
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
                launched[run.name] = RunDir(workdir).status()
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
                else:
                    error = _record_failure(workdir, code, launched.pop(name))
                    states[name] = "failed"
                log(f"{states[name]:7} {name}" + (f": {error}" if states[name] == "failed" else ""))
            time.sleep(0.2)
    except BaseException:
        _stop(active)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for run in todo:
        states.setdefault(run.name, "not started")
    return states


def submit_slurm(sweep_dir: Path, script: str) -> str:
    """Writes `script` to SWEEP_DIR/sweep.sbatch and hands it to sbatch; returns sbatch's
    answer. The runs/ directory its `#SBATCH --output` names is made first: SLURM does not make
    it, and every task would fail at once with its output nowhere."""
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    path = sweep_dir / "sweep.sbatch"
    path.write_text(script)
    if not shutil.which("sbatch"):
        raise FlagError(f"sbatch not found on this machine; the script is at {path}.")
    result = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
    if result.returncode:
        answer = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}").splitlines()
        raise SweepError(f"sbatch refused {path}: {answer[-1]}; fix what it says and launch again.")
    return result.stdout


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
