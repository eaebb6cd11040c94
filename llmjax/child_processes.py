"""Child processes that do not outlive the command that started them.

llmjax-launch and llmjax-sweep start trainings and pass SIGTERM/SIGINT on to them; but a
launcher that is SIGKILLed (an OOM killer, `kill -9`, a crashed terminal) cannot pass anything
on, and its trainings went on with parent PID 1: a relaunch then resumed the same workdir while
the orphans still wrote (and deleted) its checkpoints. Here the kernel does the passing on:
Linux's PR_SET_PDEATHSIG sends each child SIGTERM when its parent dies, the same signal the
launcher forwards, so an orphaned training stops as a preempted one does (checkpointed, exit 75)
and a rerun resumes it.

The child asks for the signal itself (`die_with_parent`, first thing in every llmjax command),
told by `start` whose child it is. A `preexec_fn` would do it between fork and exec, but that
makes Popen fork a parent that runs JAX's threads (llmjax-sweep does), which can deadlock the
child and has JAX warn so in every run's log.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PARENT = "LLMJAX_PARENT_PID"  # Set by `start` for its child only: read and removed by the child.


def start(command: list[str], env: dict | None = None, **popen_kwargs) -> subprocess.Popen:
    """`subprocess.Popen(command, env=env, **popen_kwargs)` of an llmjax command, which gets
    SIGTERM when this process dies (Linux). Call it from the main thread: the kernel ties the
    signal to the thread that started the child, and would send it when any other thread ended."""
    env = dict(os.environ if env is None else env, **{_PARENT: str(os.getpid())})
    return subprocess.Popen(command, env=env, **popen_kwargs)


def die_with_parent() -> None:
    """In a process `start` started: asks the kernel for SIGTERM when the parent dies, or ends
    now if it died already (before this ran, nobody would signal). Its own children do not
    inherit the request (the variable is removed), so they are not taken for orphans."""
    parent = os.environ.pop(_PARENT, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)
