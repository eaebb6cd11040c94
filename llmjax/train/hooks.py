"""The effects of a training loop, one hook each: divergence guard, progress log and metrics,
status file, evaluation, preemption and checkpointing. The loop (`llmjax.train.loop`) runs the
step and then each hook in order; a hook reads and may change the loop's `Progress`.

A hook that rolls the run back (the guard) returns `ROLLED_BACK`: the loop then skips the
remaining hooks of that step and tells every hook through `after_rollback`, so each can drop
what it gathered since the checkpoint.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from llmjax.checkpoint import CheckpointError, metadata
from llmjax.train.evaluate import Evaluator
from llmjax.errors import EXIT_PREEMPTED
from llmjax.train.resume import state_from_checkpoint

ROLLED_BACK = object()


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is on disk; its code tells the scheduler to retry."""

    def __init__(self):
        super().__init__(EXIT_PREEMPTED)


@dataclasses.dataclass
class Progress:
    """Where the run is: what the hooks read and change."""
    config: object
    state: object
    step: int
    data_step: int
    started: float  # perf_counter() at the start of training.
    metrics: dict | None = None  # The last step's metrics (device arrays).
    train_loss: float = float("nan")  # Mean loss of the last logged interval.
    val: dict = dataclasses.field(default_factory=lambda: {"loss": float("nan"), "bits_per_byte": float("nan")})
    guard: object = None  # The DivergenceGuard, whose state each checkpoint records.
    meter: Throughput | None = None  # The steps of the log interval in progress.

    def meta(self) -> dict:
        """What a checkpoint records beside the arrays: also the metrics of the log interval in
        progress, so that a run resumed mid-interval logs the same means as one never stopped."""
        return metadata(self.step, self.data_step, self.train_loss, self.config, self.started) | {
            "skipped_steps": int(self.state.skipped_steps)} | (
            {"guard": self.guard.state()} if self.guard is not None else {}) | (
            {"log_window": self.meter.window()} if self.meter is not None else {})


class Hook:
    def after_step(self, progress: Progress):
        """Runs after every step; may return ROLLED_BACK."""

    def after_rollback(self, progress: Progress) -> None:
        """The state went back to a checkpoint (progress.step is its step)."""


class Throughput:
    """The steps since the last progress line, and when that interval began; `carried`: those
    of them a resumed run took over from its checkpoint (in the means, not in the timing)."""

    def __init__(self, carried: list[dict] = ()):
        self.pending, self.carried, self.start = list(carried), len(carried), time.perf_counter()

    def restart(self) -> None:
        self.pending, self.carried, self.start = [], 0, time.perf_counter()

    def window(self) -> list[dict]:
        """The interval's metrics so far, as plain numbers (a checkpoint's JSON)."""
        return [{k: float(v) for k, v in m.items()} for m in jax.device_get(self.pending)]


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


class GuardHook(Hook):
    """Rolls back to the last checkpoint after `guard.patience` bad steps in a row and skips the
    data since (`llmjax.train.guard`)."""

    def __init__(self, guard, checkpointer, target, log):
        self.guard, self.checkpointer, self.target, self.log = guard, checkpointer, target, log

    def after_step(self, p: Progress):
        if not self.guard.observe(float(p.metrics["loss"])):
            return None
        restored = self.checkpointer.restore_latest(self.target.params, self.target.opt_state)
        if restored is None:
            raise CheckpointError("the loss diverged and there is no checkpoint to roll back to; "
                                  "lower optimizer.learning_rate or save earlier "
                                  "(checkpoint.every_steps).")
        self.guard.rolled_back()
        steps = p.config.train.steps
        self.log(f"step {p.step:>6}/{steps} | {self.guard.patience} bad steps in a row: rolled back "
                 f"to checkpoint step {restored.step} and skipped data steps "
                 f"{restored.meta['data_step']}..{p.data_step - 1} (rollback {self.guard.rollbacks} "
                 f"of at most {self.guard.max_rollbacks})")
        p.state, p.step = state_from_checkpoint(restored, self.target, True), restored.step
        return ROLLED_BACK


class LogHook(Hook):
    """Every train.log_every steps: the mean metrics of the interval, throughput and MFU, to
    the metrics writer and as one progress line."""

    def __init__(self, writer, meter: Throughput, tokens_per_step: int, flops_per_token: float,
                 devices: int, peak: float, log):
        self.writer, self.meter, self.log = writer, meter, log
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.devices, self.peak = devices, peak

    def after_step(self, p: Progress):
        t, meter = p.config.train, self.meter
        meter.pending.append(p.metrics | {"data_step": p.data_step - 1})
        if p.step % t.log_every and p.step != t.steps:
            return None
        fetched = jax.device_get(meter.pending)
        # A skipped step (non-finite loss or gradient, nothing applied) is counted, not averaged:
        # one bad batch would otherwise make the whole interval's loss NaN.
        good = [m for m in fetched if not int(m["skipped"])] or fetched
        values = {k: float(np.mean(np.asarray([m[k] for m in good], np.float64))) for k in fetched[0]}
        elapsed, timed = time.perf_counter() - meter.start, len(fetched) - meter.carried
        tokens_per_sec = timed * self.tokens_per_step / elapsed
        flops = tokens_per_sec * self.flops_per_token
        values.update(tokens_per_sec=tokens_per_sec, data_step=fetched[-1]["data_step"],
                      tflops_per_device=flops / self.devices / 1e12, mfu=flops / self.peak,
                      skipped=sum(int(m["skipped"]) for m in fetched))
        p.train_loss = values["loss"]
        self.writer.write(p.step, "train", values)
        eta = (t.steps - p.step) * elapsed / timed
        self.log(f"step {p.step:>6}/{t.steps} | loss {values['loss']:.4f} | lr {values['learning_rate']:.2e} "
                 f"| grad_norm {values['grad_norm']:.3f} | {tokens_per_sec:,.0f} tok/s "
                 f"| MFU {100 * values['mfu']:.1f}% | ETA {duration(eta)}"
                 + (f" | skipped {values['skipped']}" if values["skipped"] else "") + _routing(values))
        if p.step % t.log_every == 0:  # A last step off the schedule keeps its interval open in the
            meter.restart()            # checkpoint: a longer rerun logs the interval whole.
        return None

    def after_rollback(self, p: Progress) -> None:
        self.meter.restart()


def _routing(values: dict) -> str:
    """An MoE run's auxiliary loss and its worst layer's dropped pairs, for the progress line."""
    if "moe_aux_loss" not in values:
        return ""
    dropped = max((v for k, v in values.items() if k.startswith("moe_dropped/")), default=0.0)
    return f" | moe aux {values['moe_aux_loss']:.4f} | dropped {100 * dropped:.1f}%"


class StatusHook(Hook):
    """Keeps status.json's step current (what sweeps and reports read), at each log interval."""

    def __init__(self, set_status):
        self.set_status = set_status

    def after_step(self, p: Progress):
        if p.step % p.config.train.log_every == 0 or p.step == p.config.train.steps:
            self.set_status("running", p.step)


class EvalHook(Hook):
    """Every train.eval_every steps and at the end: the evaluator's metrics per dataset."""

    def __init__(self, evaluator: Evaluator, eval_fn, writer, meter: Throughput, log):
        self.evaluator, self.eval_fn, self.writer, self.meter, self.log = evaluator, eval_fn, writer, meter, log

    def after_step(self, p: Progress):
        t = p.config.train
        if not ((t.eval_every and p.step % t.eval_every == 0) or p.step == t.steps):
            return None
        results = self.evaluator(self.eval_fn, p.state.params)
        p.val = Evaluator.headline(results)
        self.writer.write(p.step, "val", p.val)
        for name, values in results.items() if len(results) > 1 else ():
            self.writer.write(p.step, f"val_{name}", values)
        describe = self.evaluator.objective.describe
        self.log(f"step {p.step:>6}/{t.steps} | " + " | ".join(
            f"val{'' if len(results) == 1 else ' ' + name} {describe(v)}" for name, v in results.items()))
        if not self.meter.pending:  # Keep evaluation time out of the next throughput figure.
            self.meter.restart()
        return None


class PreemptionHook(Hook):
    """On SIGTERM/SIGINT (agreed on by all processes): checkpoint now, then exit with
    EXIT_PREEMPTED so the scheduler reruns the command, which resumes."""

    def __init__(self, preemption, checkpointer, log):
        self.preemption, self.checkpointer, self.log = preemption, checkpointer, log

    def after_step(self, p: Progress):
        if not self.preemption.requested(p.step):
            return None
        self.checkpointer.save(p.step, p.state, p.meta, force=True)
        self.checkpointer.close()
        self.log(f"step {p.step:>6}/{p.config.train.steps} | {self.preemption.signal_name}: checkpoint "
                 f"written, exiting with code {EXIT_PREEMPTED}; rerun the same command to resume")
        raise Preempted()


class CheckpointHook(Hook):
    """Saves on the checkpoint schedule, and always at the last step, unless the guard has
    seen a bad step since the last good one (a diverging state is not worth keeping)."""

    def __init__(self, checkpointer, guard):
        self.checkpointer, self.guard = checkpointer, guard

    def after_step(self, p: Progress):
        self.checkpointer.poll()
        if self.guard.healthy:
            self.checkpointer.save(p.step, p.state, p.meta, force=p.step == p.config.train.steps)
