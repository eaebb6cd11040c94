"""The fault campaign that ships with the project (scripts/fault_campaign.py), at CI size: ten
faults, every kind at least once, then the same job without faults to compare with."""

import re
import subprocess
import sys

import pytest

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
