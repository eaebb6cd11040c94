"""A fault campaign: one training job hit by many faults of every kind, rerun after each as a
user would, then compared with the same job run without faults.

    .venv/bin/python scripts/fault_campaign.py --seed 0 --faults 50

The job is a two-process `llmjax-launch --cluster local` run of configs/tiny.py that saves a
checkpoint every 5 steps, asynchronously. At moments drawn from the seed (a step to reach, then
a delay) it injects, in a shuffled rotation so every kind comes up:

  kill         SIGKILL to the whole job at a random moment
  kill_saving  SIGKILL while an asynchronous save is in flight (seen as Orbax's temporary
               checkpoint directory; it landed mid-save if that directory outlived the job)
  signal       SIGTERM to the launcher, or SIGINT to the job's process group (Ctrl-C): the job
               must checkpoint once on an agreed step and exit with code 75
  kill_one     SIGKILL to one of the two training processes: the other must exit on its own
  damage       after a save completed, the job is killed and a file of its newest checkpoint is
               truncated or deleted: the rerun must set it aside and resume from the one before
  full_disk    the checkpoint filesystem (a size-limited tmpfs) fills up: the job must stop
               with one clear error; the campaign frees the space (root only; skipped otherwise)
  nan_batch    a data batch whose loss weights are NaN (`train.inject_nan_at`, the same batches
               in the uninterrupted run): the step is skipped; three in a row make the guard
               roll back to the last checkpoint and skip that data

At the end the per-step records (step, data step, loss, skipped) and the final parameters must
equal the uninterrupted run's bit for bit; the script prints a table of the faults and exits
non-zero if anything was lost or differs.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from absl import app, flags, logging

ROOT = Path(__file__).resolve().parents[1]
_SEED = flags.DEFINE_integer("seed", 0, "Draws the faults, their moments and their victims.")
_FAULTS = flags.DEFINE_integer("faults", 50, "Faults to inject, all kinds together.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs go (default: a temporary directory, "
                                                "removed afterwards).")
_EVERY = 5  # Checkpoint interval of the job, in steps.
KINDS = ("kill", "kill_saving", "signal", "kill_one", "damage", "full_disk", "nan_batch")
STEP_LINE = re.compile(r"^step\s+(\d+)/\d+ \| loss")
TMP_MARK = ".orbax-checkpoint-tmp"
EXIT_PREEMPTED, EXIT_USER_ERROR = 75, 2
HEARTBEAT_SECONDS = 20  # llmjax.parallel.distributed's heartbeat timeout for local jobs.


class CampaignError(AssertionError):
    """A fault was not handled as it must be."""


def plan(rng: random.Random, count: int, kinds: tuple[str, ...]) -> list[str]:
    """`count` kinds: shuffled rounds of every kind, so that a short campaign still has each."""
    out = []
    while len(out) < count:
        block = list(kinds)
        rng.shuffle(block)
        out += block
    return out[:count]


def nan_steps(rng: random.Random, count: int, steps: int) -> list[int]:
    """Data steps whose batch is poisoned: the first three in a row (the guard's patience, so it
    rolls back), the others alone."""
    if count == 0:
        return []
    start = rng.randrange(20, steps // 2)
    chosen = list(range(start, start + min(count, 3)))
    while len(chosen) < count:
        step = rng.randrange(20, steps - 20)
        if all(abs(step - c) > 3 for c in chosen):
            chosen.append(step)
    return sorted(chosen)


class Job:
    """One attempt of the job: the launcher in its own session, its output in a log file."""

    def __init__(self, command: list[str], env: dict, log: Path):
        self.log, self.started = log, time.time()
        self.first_step_at = None
        self._handle = open(log, "w")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._handle,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def step(self) -> int:
        """The last step this attempt logged (0 before its first)."""
        steps = [int(m.group(1)) for m in map(STEP_LINE.match, self.text().splitlines()) if m]
        if steps and self.first_step_at is None:
            self.first_step_at = time.time()
        return max(steps, default=0)

    def wait_for_step(self, step: int, timeout: float = 300) -> bool:
        """Until the attempt has logged `step` and one step of its own; False if it ended first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.step() >= step and self.first_step_at is not None:
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.01)
        raise CampaignError(f"step {step} not reached in {timeout:.0f}s; see {self.log}")

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def kill_all(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:  # The whole group has exited already.
            pass

    def wait(self, timeout: float = 180) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise CampaignError(f"the job did not exit within {timeout:.0f}s; see {self.log}") from None
        self.kill_all()  # Orphans of a killed launcher (a child SIGKILLed alone has none).
        self._handle.close()
        return code


def saving(checkpoints: Path) -> bool:
    return any(TMP_MARK in p.name for p in checkpoints.iterdir()) if checkpoints.is_dir() else False


def complete_steps(checkpoints: Path) -> list[int]:
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())


class TmpfsCheckpoints:
    """The job's checkpoint directory on a 64 MB tmpfs, which `fill` keeps full (as another
    writer on the same disk would: the space Orbax frees by deleting an old checkpoint is taken
    again at once) until `free`. Needs root; `reason` says why it is not mounted otherwise."""

    def __init__(self, directory: Path):
        self.directory, self.mounted = directory, False
        self.filler = directory / "filler"
        self.reason = "not root" if os.geteuid() != 0 else None
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.reason is None:
            self.directory.mkdir(parents=True)
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", str(self.directory)],
                                    capture_output=True, text=True)
            self.mounted = result.returncode == 0
            self.reason = None if self.mounted else f"mount failed: {result.stderr.strip()}"
        return self

    def _keep_full(self) -> None:
        chunk = bytes(1 << 16)
        with open(self.filler, "ab") as handle:
            while not self._stop.is_set():
                try:
                    handle.write(chunk)
                    handle.flush()
                except OSError:  # Full: try again in a moment, in case something was freed.
                    time.sleep(0.005)

    def fill(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep_full, daemon=True)
        self._thread.start()

    def free(self) -> None:
        self._stop.set()
        self._thread.join()
        self.filler.unlink(missing_ok=True)

    def __exit__(self, *exc):
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.directory)], check=False)


class Campaign:
    def __init__(self, base: Path, seed: int, faults: int):
        self.base, self.rng = base, random.Random(seed)
        self.workdir, self.reference = base / "campaign", base / "reference"
        self.checkpoints = self.workdir / "checkpoints"
        self.disk = TmpfsCheckpoints(self.checkpoints)
        self.count = faults
        self.steps = 15 * faults + 60
        self.counts = collections.Counter()
        self.mid_save = collections.Counter()
        self.recovery, self.others_exit, self.attempts = [], [], 0
        self.nan = []
        self.job = None  # The attempt running now, if any.
        self.unrecorded = 0  # Damaged checkpoints whose file sizes had not been recorded yet.

    def command(self, workdir: Path) -> list[str]:
        overrides = {"train.steps": self.steps, "train.log_every": 1, "train.eval_every": 50,
                     "checkpoint.every_steps": _EVERY, "checkpoint.keep_last": 3,
                     "checkpoint.save_timeout_minutes": 0.5} | (
            {"train.inject_nan_at": ",".join(map(str, self.nan))} if self.nan else {})
        return [sys.executable, "-m", "llmjax.cli.launch", "--config=configs/tiny.py",
                f"--workdir={workdir}", "--cluster=local", "--num_processes=2", "--devices_per_process=1",
                *(f"--config.{k}={v}" for k, v in overrides.items())]

    def env(self) -> dict:
        return dict(os.environ, LLMJAX_CACHE=str(self.base / "cache"), JAX_PLATFORMS="cpu",
                    PYTHONUNBUFFERED="1")

    def start(self, workdir: Path) -> Job:
        self.attempts += 1
        self.job = Job(self.command(workdir), self.env(), self.base / "logs" / f"{self.attempts:03d}.log")
        return self.job

    def run(self) -> list[str]:
        """Runs the reference and the campaign; returns the problems `compare` found. However it
        ends, no job outlives it: each runs in a session of its own, which neither a failed check
        nor Ctrl-C on the campaign would reach."""
        (self.base / "logs").mkdir(parents=True, exist_ok=True)
        try:
            return self._run()
        finally:
            if self.job is not None:
                self.job.kill_all()

    def _run(self) -> list[str]:
        with self.disk:
            kinds = tuple(k for k in KINDS if k != "full_disk" or self.disk.mounted)
            if not self.disk.mounted:
                print(f"full_disk faults skipped: {self.disk.reason}", flush=True)
            faults = plan(self.rng, self.count, kinds)
            self.nan = nan_steps(self.rng, faults.count("nan_batch"), self.steps)
            self.counts["nan_batch"] = len(self.nan)
            print(f"reference: {self.steps} steps without faults; NaN batches at data steps {self.nan}", flush=True)
            reference = self.start(self.reference)
            if reference.wait(timeout=1800) != 0:
                raise CampaignError(f"the uninterrupted run failed; see {reference.log}")
            timed = [k for k in faults if k != "nan_batch"]
            targets = sorted(self.rng.sample(range(8, self.steps - 15), len(timed)))
            expect = None
            for number, (kind, target) in enumerate(zip(timed, targets), 1):
                job = self.start(self.workdir)
                if not job.wait_for_step(target):
                    raise CampaignError(f"the job ended before fault {number} ({kind}); see {job.log}")
                self.check_recovery(job, expect)
                expect = getattr(self, f"inject_{kind}")(job)
                self.counts[kind] += 1
                print(f"fault {number:>3}/{len(timed)}: {kind:<11} at step {job.step():>4} "
                      f"(attempt {self.attempts}, exit {job.process.returncode})", flush=True)
            final = self.start(self.workdir)
            final.wait_for_step(0)
            self.check_recovery(final, expect)
            if final.wait(timeout=1800) != 0:
                raise CampaignError(f"the last rerun failed; see {final.log}")
            return self.compare()  # While the checkpoint filesystem is still mounted.

    def check_recovery(self, job: Job, expect: str | None) -> None:
        """The attempt after a fault: how long until it trained, and did it say what it must."""
        if self.attempts > 2:
            self.recovery.append(job.first_step_at - job.started)
        if expect and expect not in job.text():
            raise CampaignError(f"the rerun after a fault did not say {expect!r}; see {job.log}")

    # One method per kind: inject, wait for the job to end, check how it ended; returns what
    # the next attempt must print, if anything.
    def _killed(self, job: Job, kind: str) -> None:
        job.kill_all()
        job.wait()
        if saving(self.checkpoints):
            self.mid_save[kind] += 1

    def inject_kill(self, job: Job) -> None:
        time.sleep(self.rng.uniform(0.0, 0.5))
        self._killed(job, "kill")

    def inject_kill_saving(self, job: Job) -> None:
        deadline = time.time() + 60
        while not saving(self.checkpoints) and time.time() < deadline:
            time.sleep(0.002)
        self._killed(job, "kill_saving")

    def inject_signal(self, job: Job) -> None:
        time.sleep(self.rng.uniform(0.0, 0.5))
        if self.rng.random() < 0.5:
            name, _ = "SIGTERM", job.process.send_signal(signal.SIGTERM)
        else:
            name, _ = "SIGINT", os.killpg(job.process.pid, signal.SIGINT)
        code = job.wait(timeout=120)
        stopped = re.findall(r"step\s+(\d+)/\d+ \| SIG\w+: checkpoint written", job.text())
        if code != EXIT_PREEMPTED or len(stopped) != 1:
            raise CampaignError(f"{name}: exit {code}, {len(stopped)} preemption checkpoints; see {job.log}")
        if int(stopped[0]) not in complete_steps(self.checkpoints):
            raise CampaignError(f"{name}: no checkpoint of the agreed step {stopped[0]}; see {job.log}")
        return f"resuming from checkpoint step {stopped[0]}"

    def inject_kill_one(self, job: Job) -> None:
        time.sleep(self.rng.uniform(0.0, 0.5))
        children = job.children()
        if len(children) != 2:
            raise CampaignError(f"expected 2 training processes, found {children}; see {job.log}")
        os.kill(self.rng.choice(children), signal.SIGKILL)
        start = time.time()
        code = job.wait(timeout=3 * HEARTBEAT_SECONDS)
        self.others_exit.append(time.time() - start)
        if code == 0:
            raise CampaignError(f"a job with a dead process exited 0; see {job.log}")
        if saving(self.checkpoints):
            self.mid_save["kill_one"] += 1

    def inject_damage(self, job: Job) -> str:
        while len(complete_steps(self.checkpoints)) < 2:  # One to damage, one to fall back to.
            if not job.wait_for_step(job.step() + 1):
                raise CampaignError(f"the job ended before a second checkpoint; see {job.log}")
        self._killed(job, "damage")
        newest = self.checkpoints / str(complete_steps(self.checkpoints)[-1])
        victim = self.rng.choice(sorted(f for f in newest.rglob("*") if f.is_file()))
        if self.rng.random() < 0.5:
            os.truncate(victim, victim.stat().st_size // 2)
        else:
            victim.unlink()
        if not (self.checkpoints / "integrity" / f"{newest.name}.json").exists():
            # Killed within a step of the save completing, before its sizes were recorded: only
            # Orbax's own reading can tell, and the final comparison shows whether it did.
            self.unrecorded += 1
            return None
        return f"checkpoint of step {newest.name} is damaged"

    def inject_full_disk(self, job: Job) -> None:
        self.disk.fill()
        try:
            code = job.wait()
        finally:
            self.disk.free()
        errors = [line for line in job.text().splitlines() if line.startswith("error: ")]
        if code != EXIT_USER_ERROR or not errors or not any(
                cause in errors[0] for cause in ("No space left on device", "the disk is full")):
            raise CampaignError(f"a full disk ended the job with exit {code} and {errors[:1]}; see {job.log}")

    # The verdict.
    def compare(self) -> list[str]:
        """Problems found comparing with the uninterrupted run (none: the campaign passed)."""
        problems = []
        ours, theirs = records(self.workdir), records(self.reference)
        lost = sum(1 for a, b in zip_longest_records(ours, theirs) if a != b)
        self.lost = lost
        if lost:
            problems.append(f"{lost} per-step records differ from the uninterrupted run's")
        consumed = max((r[1] for r in ours), default=-1)  # The last data step the job trained on.
        self.nan_landed = sum(1 for step in self.nan if step <= consumed)
        if self.nan_landed != len(self.nan):
            problems.append(f"only {self.nan_landed} of {len(self.nan)} NaN batches reached the job")
        summaries = [json.loads((w / "summary.json").read_text()) for w in (self.workdir, self.reference)]
        self.guard = {key: [s[key] for s in summaries] for key in ("skipped_steps", "rollbacks")}
        for key, (ours_value, theirs_value) in self.guard.items():
            if ours_value != theirs_value:
                problems.append(f"{key}: {ours_value}, the uninterrupted run {theirs_value}")
        same, leaves = same_params(self.workdir, self.reference, self.steps)
        self.leaves = leaves
        if not same:
            problems.append("the final parameters differ from the uninterrupted run's")
        return problems


def records(workdir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["data_step"], json.dumps(r["loss"]), r["skipped"]) for r in rows
            if r["split"] == "train"]


def zip_longest_records(a: list, b: list):
    return [(a[i] if i < len(a) else None, b[i] if i < len(b) else None) for i in range(max(len(a), len(b)))]


def same_params(workdir: Path, reference: Path, step: int) -> tuple[bool, int]:
    """Whether both runs' final parameters are bit-identical, and how many arrays they have."""
    import jax  # noqa: PLC0415 - only the verdict needs JAX in this process.
    import numpy as np  # noqa: PLC0415
    import orbax.checkpoint as ocp  # noqa: PLC0415

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # Whatever mesh wrote them.
    checkpointer, trees = ocp.StandardCheckpointer(), []
    for run in (workdir, reference):
        path = run / "checkpoints" / str(step) / "params"
        shapes = ocp.StandardCheckpointHandler().metadata(path)
        trees.append(checkpointer.restore(path, jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)))
    leaves = [jax.tree.leaves(jax.tree.map(np.asarray, t)) for t in trees]
    same = len(leaves[0]) == len(leaves[1]) and all(
        a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes() for a, b in zip(*leaves))
    return same, len(leaves[0])


def report(campaign: Campaign, problems: list[str], seconds: float) -> None:
    c = campaign
    print(f"\nfault campaign: seed {_SEED.value}, {sum(c.counts.values())} faults, {c.steps} steps, "
          f"{c.attempts - 1} launches of the faulty job, {seconds / 60:.1f} min")
    print("| fault | injected | landed mid-save |\n|---|---|---|")
    for kind in KINDS:
        if c.counts[kind] or kind != "full_disk":
            mid = "-" if kind in ("signal", "full_disk", "nan_batch") else c.mid_save[kind]
            print(f"| {kind} | {c.counts[kind]} | {mid} |")
    print(f"| all | {sum(c.counts.values())} | {sum(c.mid_save.values())} |")
    if c.unrecorded:
        print(f"{c.unrecorded} damaged checkpoints had been killed before their file sizes were recorded")
    if c.recovery:
        print(f"recovery, relaunch to first trained step: median {statistics.median(c.recovery):.1f} s, "
              f"max {max(c.recovery):.1f} s over {len(c.recovery)} restarts")
    if c.others_exit:
        print(f"after one process was killed the job ended in: median {statistics.median(c.others_exit):.1f} s, "
              f"max {max(c.others_exit):.1f} s (heartbeat timeout {HEARTBEAT_SECONDS} s)")
    print(f"NaN batches: {c.nan_landed} of {len(c.nan)} reached the job; steps skipped by the step "
          f"{c.guard['skipped_steps'][0]} and guard rollbacks {c.guard['rollbacks'][0]}, as in the "
          f"uninterrupted run ({c.guard['skipped_steps'][1]}, {c.guard['rollbacks'][1]})")
    print(f"steps lost: {c.lost}; "
          f"final parameters ({c.leaves} arrays): "
          f"{'bit-identical' if not any('parameters' in p for p in problems) else 'DIFFERENT'}")
    print("PASSED" if not problems else "FAILED: " + "; ".join(problems))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.ERROR)  # Orbax's notes on the checkpoints it reads are not news.
    if _FAULTS.value < 1:
        raise app.UsageError("--faults must be at least 1")
    base = Path(_WORKDIR.value or tempfile.mkdtemp(prefix="llmjax-faults-")).resolve()
    if _WORKDIR.value and base.exists() and any(base.iterdir()):
        raise app.UsageError(f"--workdir {base} is not empty; give a new directory.")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # Unwinds: jobs are killed.
    start = time.time()
    campaign = Campaign(base, _SEED.value, _FAULTS.value)
    try:
        problems = campaign.run()
    except CampaignError as error:
        print(f"FAILED: {error} (the runs and their logs are kept in {base})", flush=True)
        sys.exit(1)
    report(campaign, problems, time.time() - start)
    if problems:
        print(f"the runs and their logs are kept in {base}")
    elif not _WORKDIR.value:
        shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    app.run(main)
