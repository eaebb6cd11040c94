"""The ahead-of-time planner, FSDP's memory saving, and --print_sharding."""

import subprocess
import sys

import pytest

from llmjax.plan import per_device_bytes
from llmjax.run import bootstrap

from conftest import ROOT, make_tiny_config, train_env, untouched

LLAMA2_7B_PARAMS = 6_738_415_616  # Published count (see test_sweep.py).
MIXTRAL_8X7B_PARAMS = 46_702_792_704  # Likewise.


def _state_bytes(**mesh):
    config = make_tiny_config(vocab_size=1024, d_model=256, head_dim=64, mlp_dim=512)
    config.mesh.ici.update(data=1, fsdp=1, sequence=1, tensor=1)
    config.mesh.ici.update(**mesh)
    state = bootstrap(config).state
    return per_device_bytes((state.params, state.opt_state))


def test_fsdp_divides_params_and_optimizer_state_across_devices():
    replicated, sharded = _state_bytes(data=8), _state_bytes(fsdp=8)
    # Norm scales (0.1% of the bytes here) stay replicated; everything else is split 8 ways.
    assert sharded / replicated == pytest.approx(1 / 8, rel=0.01)


def _plan(tmp_path, *overrides, config="configs/llama2_7b.py"):
    return subprocess.run(
        [sys.executable, "-m", "llmjax.cli.plan", f"--config={config}", "--target=h100",
         "--config.data.seq_len=4096", "--config.model.remat=full",
         "--config.train.global_batch_size=64", *overrides],
        cwd=ROOT, env=train_env(tmp_path), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_llama2_7b_fits_an_h100_with_fsdp_64_and_not_without(tmp_path):
    fits = _plan(tmp_path, "--config.mesh.ici.data=1", "--config.mesh.ici.fsdp=64")
    assert fits.returncode == 0, fits.stderr[-2000:]
    assert "target h100: 64 devices, mesh {'data': 1, 'fsdp': 64, 'expert': 1, 'sequence': 1, 'tensor': 1}" in fits.stdout
    params_gb = float(fits.stdout.split("params")[1].split("GB")[0])
    assert params_gb == pytest.approx(LLAMA2_7B_PARAMS * 4 / 64 / 1e9, abs=0.01)  # fp32, 1/64 each.
    assert ": fits" in fits.stdout
    replicated = _plan(tmp_path, "--config.mesh.ici.data=64", "--config.mesh.ici.fsdp=1")
    assert replicated.returncode == 3
    assert "DOES NOT FIT" in replicated.stdout and "raise mesh.ici.fsdp" in replicated.stderr
    params_gb = float(replicated.stdout.split("params")[1].split("GB")[0])
    assert params_gb == pytest.approx(LLAMA2_7B_PARAMS * 4 / 1e9, abs=0.01)


@pytest.mark.slow
def test_mixtral_8x7b_fits_an_h100_split_over_experts_and_fsdp_and_not_over_fsdp_alone(tmp_path):
    """Expert parallelism: experts over the expert axis, every weight's embed over fsdp x expert,
    so all 46.7B parameters are split 64 ways; fsdp=8 alone keeps 1/8 of them per device."""
    mixtral = dict(config="configs/mixtral_8x7b.py")
    fits = _plan(tmp_path, "--config.mesh.ici.data=1", "--config.mesh.ici.expert=8", "--config.mesh.ici.fsdp=8",
                 **mixtral)
    assert fits.returncode == 0, fits.stderr[-2000:]
    assert "mesh {'data': 1, 'fsdp': 8, 'expert': 8, 'sequence': 1, 'tensor': 1}" in fits.stdout and ": fits" in fits.stdout
    params_gb = float(fits.stdout.split("params")[1].split("GB")[0])
    assert params_gb == pytest.approx(MIXTRAL_8X7B_PARAMS * 4 / 64 / 1e9, abs=0.01)
    dense_layout = _plan(tmp_path, "--config.mesh.ici.data=8", "--config.mesh.ici.fsdp=8", **mixtral)
    assert dense_layout.returncode == 3 and "DOES NOT FIT" in dense_layout.stdout
    params_gb = float(dense_layout.stdout.split("params")[1].split("GB")[0])
    assert params_gb == pytest.approx(MIXTRAL_8X7B_PARAMS * 4 / 8 / 1e9, abs=0.01)


@pytest.mark.slow
def test_print_sharding_shows_each_parameter_and_writes_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "llmjax.cli.train", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}",
         "--print_sharding", "--config.mesh.ici.data=2", "--config.mesh.ici.fsdp=2", "--config.mesh.ici.tensor=2"],
        cwd=ROOT, env=train_env(tmp_path / "cache", devices=8), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if "/" in line.split(" ")[0]}
    gate = rows["layers/mlp/gate/kernel"]
    assert "('layers', 'embed', 'mlp')" in gate and "(None, ('fsdp', 'expert'), 'tensor')" in gate  # expert: size 1 here.
    assert gate.split()[-1] == f"{2 * 64 * 128 * 4 // 4:,}"  # fp32 bytes over fsdp=2 x tensor=2.
    assert not (tmp_path / "run").exists() and untouched(tmp_path / "cache")
