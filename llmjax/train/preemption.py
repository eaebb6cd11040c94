"""SIGTERM/SIGINT become a request to stop cleanly: finish the step, checkpoint, exit.

Schedulers (SLURM, Kubernetes, TPU maintenance) send SIGTERM some time before killing a job;
dying mid-step would lose everything since the last checkpoint. A second signal while the
checkpoint is being written is ignored, so an impatient Ctrl-C cannot corrupt it.
"""

from __future__ import annotations

import signal

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later". Rerunning the same command resumes.


class PreemptionFlag:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None
