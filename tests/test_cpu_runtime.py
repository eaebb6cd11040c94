"""The process settings of llmjax.cpu_runtime: with the host allocator setting a CPU step that
allocates large temporaries stops page-faulting them in again on every execution (each case in
a fresh process: the setting is process-wide and must come before JAX starts its threads), and
the XLA flags send weight-gradient products to oneDNN."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from llmjax import cpu_runtime

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


def test_weight_gradient_products_run_on_onednn():
    """The test process is configured as llmjax commands are (conftest.py): a product with a
    transposed operand, the shape of every weight gradient, compiles to XLA's oneDNN matmul.
    Fails if a JAX release drops or renames the flags."""
    x = jnp.ones((1024, 256), jnp.bfloat16)  # Smaller products stay with XLA's own emitter.
    dy = jnp.ones((1024, 512), jnp.bfloat16)
    hlo = jax.jit(lambda x, dy: x.T @ dy).lower(x, dy).compile().as_text()
    assert "__onednn$matmul" in hlo
