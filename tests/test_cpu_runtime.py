"""The process settings of llmjax.cpu_runtime: with the host allocator setting a CPU step that
allocates large temporaries stops page-faulting them in again on every execution (each case in
a fresh process: the setting is process-wide and must come before JAX starts its threads), and
the XLA flags send weight-gradient products to oneDNN."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax import cpu_runtime
from llmjax.presets import compose
from llmjax.run import bootstrap
from llmjax.train import state

# A jitted function whose ~200 MB of temporaries XLA:CPU allocates and frees on every call;
# prints the fewest minor page faults of one call in five after warm-up. The fewest, because a
# kernel that reclaims idle memory on its own (DAMON's pageout, as on the machine this was
# written on) now and then unmaps retained pages between two calls; the system allocator
# faults every call's temporaries in, so its fewest stays high.
_PROGRAM = """
import resource, sys
from llmjax.cpu_runtime import retain_freed_memory
print(retain_freed_memory())
import jax, jax.numpy as jnp
x = jnp.ones((4096, 4096), jnp.float32)
step = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x) + jnp.exp(x) @ jnp.tanh(x)).sum())
for _ in range(3):
    step(x).block_until_ready()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults))
"""


def _faults(allocator: str) -> tuple[str, int]:
    env = os.environ | {"LLMJAX_HOST_MALLOC": allocator, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(sys.platform != "linux", reason="a glibc setting")
def test_retained_memory_is_reused_without_page_faults():
    applied, retained = _faults("retain")
    default, system = _faults("system")
    assert (applied, default) == ("True", "False")
    # 4 temporaries of 64 MiB = 65k pages faulted in per call by the system allocator.
    assert system > 30_000, system
    assert retained < system / 20, (retained, system)


def test_xla_flags_are_added_without_overriding_the_users(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_cpu_use_onednn=false")
    cpu_runtime.add_xla_flags()
    flags = os.environ["XLA_FLAGS"].split()
    assert flags[:2] == ["--xla_force_host_platform_device_count=2", "--xla_cpu_use_onednn=false"]
    assert "--xla_cpu_use_onednn=true" not in flags
    assert "--xla_cpu_experimental_onednn_custom_call=true" in flags


def test_a_launcher_sets_its_device_count_and_keeps_the_users_other_flags():
    given = "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_onednn_custom_call=false"
    assert cpu_runtime.with_fake_devices(given, 2).split() == [
        "--xla_cpu_experimental_onednn_custom_call=false", "--xla_force_host_platform_device_count=2"]
    assert cpu_runtime.with_fake_devices("", 4) == "--xla_force_host_platform_device_count=4"


def test_cached_decoding_asks_for_fp32_values_products_only_with_onednn_custom_calls_off(monkeypatch):
    assert cpu_runtime.values_product_dtype() is None  # This process: oneDNN on, as a user's.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_onednn_custom_call=false")
    assert cpu_runtime.values_product_dtype() == "float32"


def test_weight_gradient_products_run_on_onednn():
    """The test process is configured as llmjax commands are (conftest.py): a product with a
    transposed operand, the shape of every weight gradient, compiles to XLA's oneDNN matmul.
    Fails if a JAX release drops or renames the flags."""
    x = jnp.ones((1024, 256), jnp.bfloat16)  # Smaller products stay with XLA's own emitter.
    dy = jnp.ones((1024, 512), jnp.bfloat16)
    hlo = jax.jit(lambda x, dy: x.T @ dy).lower(x, dy).compile().as_text()
    assert "__onednn$matmul" in hlo


def test_the_state_initialiser_compiles_for_one_call_and_initialises_as_before(monkeypatch):
    """`create_train_state` compiles the initialiser with `for_one_call`'s options (LLVM -O2 on
    the CPU, 2-3x less compile time), and the parameters are those of XLA's default compile
    up to rounding. Fails if the options stop reaching the compile or start changing values."""
    options = []
    real_jit = jax.jit

    def recording_jit(fun, **kwargs):
        if getattr(fun, "func", None) is state.fresh_state:
            options.append(kwargs.get("compiler_options"))
        return real_jit(fun, **kwargs)

    monkeypatch.setattr(state.jax, "jit", recording_jit)
    run = bootstrap(compose("tiny"), devices=jax.devices()[:1])
    fresh = run.create_state()
    monkeypatch.undo()
    assert options == [{"xla_backend_optimization_level": 2}]
    shardings = jax.tree.map(lambda x: x.sharding, run.state)
    default = real_jit(functools.partial(state.fresh_state, config=run.config, tx=run.tx),
                       out_shardings=shardings)(jax.random.key(run.config.seed))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), fresh, default)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")  # An accelerator compiles it as XLA chooses.
    assert cpu_runtime.for_one_call() == {}


# Prints how many of the params and optimizer state the compiled one-device train step of the
# `tiny` benchmark copies at its top level, XLA flags as in XLA_FLAGS and `configure`.
_COPIES = """
from llmjax import cpu_runtime
cpu_runtime.configure()
from llmjax import benchmark
hlo = benchmark.compile_train_step(benchmark.benchmark_config("tiny"))[0].as_text()
print(sum(" copy(%state" in line for line in hlo[hlo.index("ENTRY"):].splitlines()))
"""


@pytest.mark.parametrize("region_analysis", ["true", "false"])
def test_donated_train_state_is_updated_without_copies(region_analysis):
    """With copy insertion's region analysis (`CPU_XLA_FLAGS`), the compiled train step writes
    the donated params and optimizer state in place: no copy of any of them at its top level.
    XLA's default copies them (270 MiB per bench36m step); one device, as the benchmarks run
    (sharded over this suite's 8 fake devices, the step happens not to copy either way)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_cpu_copy_insertion_use_region_analysis={region_analysis}")
    out = subprocess.run([sys.executable, "-c", _COPIES], env=env, capture_output=True, text=True,
                         timeout=600, check=True)
    copies = int(out.stdout.split()[-1])
    assert (copies == 0) == (region_analysis == "true"), copies


# Compiles the fp32-logit product of bench36m's shape, XLA flags as in XLA_FLAGS and `configure`;
# prints how many converts the program has and its largest error against numpy's fp32 product.
_LOGITS = """
from llmjax import cpu_runtime
cpu_runtime.configure()
import jax, jax.numpy as jnp, numpy as np
from llmjax.model.layers.output import fp32_product
x = jax.random.normal(jax.random.key(0), (1024, 512), jnp.bfloat16)
w = jax.random.normal(jax.random.key(1), (2048, 512), jnp.bfloat16)
product = jax.jit(fp32_product)
hlo = product.lower(x, w).compile().as_text()
exact = np.asarray(x, np.float32) @ np.asarray(w, np.float32).T
print(hlo[hlo.index("ENTRY"):].count("convert"), float(np.abs(product(x, w) - exact).max()))
"""


@pytest.mark.parametrize("disabled", ["float-normalization-bf16", ""])
def test_fp32_logits_come_from_a_bf16_product(disabled):
    """With float normalization off (`CPU_XLA_FLAGS`), the product of bf16 operands with an fp32
    result keeps its bf16 operands (the fast bf16 kernel, accumulating in fp32); with the pass
    on, XLA converts both operands to fp32 first. Either way the result is fp32-exact."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_disable_hlo_passes={disabled}")
    out = subprocess.run([sys.executable, "-c", _LOGITS], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    converts, error = int(out[0]), float(out[1])
    assert (converts == 0) == bool(disabled), converts
    assert error < 1e-3, error  # |logit| ~ 20: fp32 accumulation; a bf16 result would be off by ~0.06.


FAMILY_PRESETS = ["tiny", "gpt2-tiny", "bert-tiny", "t5-tiny", "lstm-tiny", "tiny_moe"]


@functools.cache
def _steps_hlo(preset: str) -> str:
    """The compiled train and eval steps of a preset, as text (this process has
    `CPU_XLA_FLAGS`, see conftest.py)."""
    run = bootstrap(compose(preset))
    return run.lower_train_step().compile().as_text() + run.compile_eval_step().as_text()


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_train_and_eval_steps_accumulate_no_sum_in_bf16(preset):
    """Without float normalization XLA:CPU runs a bf16 reduction as written, accumulating in
    bf16, so every family's train and eval steps must sum in fp32. A bias added after its cast
    to bf16, or an embedding table cast before its lookup (a bf16 scatter-add of its
    gradient), fails here."""
    hlo = _steps_hlo(preset)
    # MoE dispatch scatters rows into expert buffers and back (`/mlp/`): each destination row
    # takes at most top-k of them, a sum as exact as its bf16 result.
    bf16_sums = [line.strip()[:160] for line in hlo.splitlines()
                 if re.search(r"= bf16\[[0-9,]*\]\S* (reduce|reduce-window|scatter)\(", line)
                 and "/mlp/scatter" not in line]
    assert not bf16_sums, bf16_sums[:3]


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_train_and_eval_steps_evaluate_no_transcendental_in_bf16(preset):
    """Activations (SiLU, either GELU) run in fp32 (`llmjax/model/layers/activation.py`): a
    chain of bf16 exp/tanh/divide is 2-3.5x slower on XLA:CPU and rounds at every op. An MLP
    that applies its activation to bf16 operands again fails here."""
    ops = r"(exponential|exponential-minus-one|tanh|logistic|erf|divide|log|log-plus-one|rsqrt|sqrt|power)"
    bf16_math = [line.strip()[:160] for line in _steps_hlo(preset).splitlines()
                 if re.search(rf"= bf16\[[0-9,]*\]\S* {ops}\(", line)]
    assert not bf16_math, bf16_math[:3]
