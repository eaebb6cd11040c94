"""No process a test starts may outlive it. A test that times out waiting for a job (a hung
two-process run, the fault campaign) fails, but `Popen` leaves the job running: it would go on
holding ports, cores and files through the rest of the suite, and slow every later test on a
2-core machine. conftest.py makes each test process adopt its orphans and kills what a test left.
"""

import ctypes
import os
import signal
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def adopt_orphans() -> None:
    """Makes this process the subreaper of everything it starts: a job whose parent dies (a
    launcher SIGKILLed by a test's timeout, the fault campaign killed by its test) is
    reparented here instead of to init, so `survivors` still finds it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(child) for child in (task / "children").read_text().split()]
        except OSError:  # The thread or the process ended meanwhile.
            pass
    return out


def _describe(pid: int) -> tuple[str, str] | None:
    """(state, command line) of `pid`, None once it is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return None
    return state, command.strip()


# Helpers a library starts once per test process and keeps until it exits, by design: killing
# them breaks the next test that needs them (a new resource tracker knows none of the old one's
# semaphores). Their command lines say what they are.
SHARED_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "joblib.externals.loky")


def _live_descendants() -> dict[int, str]:
    found, pending = {}, _children(os.getpid())
    while pending:
        pid = pending.pop()
        described = _describe(pid)
        if described is not None:
            pending += _children(pid)
            if described[0] != "Z" and not any(helper in described[1] for helper in SHARED_HELPERS):
                found[pid] = described[1]
    return found


def survivors(patience: float = 2.0) -> dict[int, str]:
    """This process's live descendants (exited ones waiting to be reaped, and SHARED_HELPERS,
    excluded): pid -> command, after up to `patience` seconds for those already on their way
    out (a killed job's processes take a moment to go)."""
    deadline = time.monotonic() + patience
    while (found := _live_descendants()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def kill(pids, patience: float = 5.0) -> None:
    """SIGKILLs `pids` and reaps them: whichever are this process's children by then (their
    parents died with them). The test that started them is over, so no `Popen` waits for them."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        for pid in set(_children(os.getpid())) & set(pids):
            if (_describe(pid) or ("",))[0] == "Z":
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:  # Reaped meanwhile by whoever started it.
                    pass
        if all(_describe(pid) is None for pid in pids):
            return
        time.sleep(0.01)
