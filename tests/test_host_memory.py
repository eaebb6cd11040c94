"""The host allocator setting (llmjax.host_memory): a CPU step that allocates large temporaries
stops page-faulting them in again on every execution. Each case runs in a fresh process, since
the setting is process-wide and must come before JAX starts its threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A jitted function whose ~200 MB of temporaries XLA:CPU allocates and frees on every call;
# prints the minor page faults of one call after warm-up.
_PROGRAM = """
import resource, sys
from llmjax.host_memory import retain_freed_memory
print(retain_freed_memory())
import jax, jax.numpy as jnp
x = jnp.ones((4096, 4096), jnp.float32)
step = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x) + jnp.exp(x) @ jnp.tanh(x)).sum())
for _ in range(3):
    step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
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
