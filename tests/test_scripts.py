"""Every benchmark and maintenance script under scripts/ starts: its imports resolve against the
package as it is now and its flags parse (`--help`). Their figures are printed, not tested, but
a script broken by a refactor must not wait for someone to run a benchmark to be found."""

import subprocess
import sys

import pytest

from conftest import ROOT

TORCH_SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("reference_torch*.py"))  # Run under .venv-ref.
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py") if p.name not in TORCH_SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_starts(script):
    result = subprocess.run([sys.executable, f"scripts/{script}", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    # absl exits 1 after printing --help, argparse 0; a broken import is a traceback either way.
    assert result.returncode in (0, 1) and "Traceback" not in result.stdout + result.stderr, result.stderr[-2000:]
    assert "usage" in result.stdout.lower() or "flags:" in result.stdout.lower()


@pytest.mark.parametrize("script", TORCH_SCRIPTS)
def test_torch_reference_starts_under_the_reference_environment(script, reference_python):
    result = subprocess.run([str(reference_python), f"scripts/{script}", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()
