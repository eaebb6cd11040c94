"""The fault campaign that ships with the project (scripts/fault_campaign.py), at CI size: ten
faults, every kind at least once, then the same job without faults to compare with."""

import re
import signal
import subprocess
import sys
import time

import pytest

import stray_processes
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_ten_fault_campaign_loses_nothing(tmp_path):
    result = subprocess.run([sys.executable, "scripts/fault_campaign.py", "--seed", "0", "--faults", "10",
                             f"--workdir={tmp_path / 'campaign'}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=1200)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    injected = dict(re.findall(r"^\| (\w+) \| (\d+) \|", out, re.M))
    kinds = {"kill", "kill_saving", "signal", "kill_one", "damage", "nan_batch"} | (
        set() if "full_disk faults skipped" in out else {"full_disk"})
    assert {k for k, n in injected.items() if k != "all" and int(n) > 0} == kinds, out
    assert int(injected["all"]) == 10
    assert "steps lost: 0;" in out and "bit-identical" in out and out.rstrip().endswith("PASSED")
    assert re.search(r"kill_saving \| \d+ \| [1-9]", out), out  # A kill did land mid-save.


def test_a_stopped_campaign_leaves_no_job_running(tmp_path):
    """SIGTERM to the campaign while its job trains: the job, in a session of its own that the
    signal does not reach, is killed with it (orphans of this test are reparented to it,
    tests/stray_processes.py, so none escapes the check). With 50 faults the reference job has
    810 steps to run, far more than the seconds its killed processes take to go."""
    campaign = subprocess.Popen([sys.executable, "scripts/fault_campaign.py", "--faults", "50",
                                 f"--workdir={tmp_path}"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "logs" / "001.log"
    deadline = time.time() + 300
    while not (log.exists() and re.search(r"^step\s+\d+/", log.read_text(), re.M)):
        assert campaign.poll() is None and time.time() < deadline, campaign.communicate()[0][-3000:]
        time.sleep(0.1)
    assert any(str(tmp_path) in command for command in stray_processes.survivors(patience=0).values())
    campaign.send_signal(signal.SIGTERM)
    assert campaign.wait(timeout=60) == 128 + signal.SIGTERM
    assert not stray_processes.survivors(patience=10)
