"""SIGTERM/SIGINT become a request to stop cleanly: finish the step, checkpoint, exit.

Schedulers (SLURM, Kubernetes, TPU maintenance) send SIGTERM some time before killing a job;
dying mid-step would lose everything since the last checkpoint. A second signal while the
checkpoint is being written is ignored, so an impatient Ctrl-C cannot corrupt it.

In a multi-process job every process must stop at the same step, or the others would wait
forever in the next step's collectives. There JAX's own preemption service (which handles
SIGTERM once `jax.distributed` is initialised) tells all processes the same agreed step, and a
SIGINT (Ctrl-C reaches every process of a local job at its own moment) is handed to it as a
SIGTERM.
"""

from __future__ import annotations

import os
import signal

import jax


class PreemptionFlag:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}
        self._multi_process = jax.process_count() > 1

    def __enter__(self):
        # With several processes SIGTERM belongs to JAX's preemption service.
        signals = (signal.SIGINT,) if self._multi_process else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name
        if self._multi_process:  # Only the preemption service can agree on a step.
            os.kill(os.getpid(), signal.SIGTERM)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, step: int) -> bool:
        """Whether to stop after `step`; collective in multi-process jobs (call every step)."""
        if self._multi_process:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = self.signal_name or "SIGTERM"
                return True
            return False
        return self.signal_name is not None
