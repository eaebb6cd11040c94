"""llmjax.child_processes: a training started by llmjax-launch or llmjax-sweep dies with it
(the launcher's SIGKILL itself is tested in test_launch.py)."""

import os
import signal
import subprocess
import sys

from conftest import ROOT

_CHILD = ("import os; from llmjax import child_processes; child_processes.die_with_parent(); "
          "print('running', os.environ.get('LLMJAX_PARENT_PID'))")


def test_a_child_whose_parent_died_before_it_asked_to_be_signalled_stops_at_once():
    """Between its start and `die_with_parent` (a second of imports) nobody would signal it."""
    orphan = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, LLMJAX_PARENT_PID="0"), timeout=120)  # Not its parent.
    assert orphan.returncode == -signal.SIGTERM and orphan.stdout == ""


def test_a_child_runs_on_and_its_own_children_are_not_taken_for_orphans():
    child = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, LLMJAX_PARENT_PID=str(os.getpid())), timeout=120)
    assert child.returncode == 0 and child.stdout == "running None\n", child.stderr[-2000:]
