"""Keeps freed host memory in the process, so CPU train steps stop page-faulting.

XLA:CPU allocates an execution's temporaries as one block (2.4 GB for a bench36m step) and
frees it when the step ends. glibc serves a block that large from any thread but the main one
with a fresh `mmap` whatever its tunables say, and unmaps it on free: every step then faults
its whole working set back in, page by zeroed page (bench36m on a 2-core CPU: 590k faults and
1.1 s of kernel time per 5.3 s step; `LLMJAX_HOST_MALLOC=system scripts/benchmark.py`
measures without).
With every thread on glibc's main arena, `mmap` off and trimming off, the freed block is reused
as it is: no faults, and the step is ~10% faster. The price is that the process keeps its peak
heap until it exits, as a training process does anyway.

Only for CPU-only JAX installs on glibc: with an accelerator the big buffers live on the device.
`LLMJAX_HOST_MALLOC=system` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def _cpu_only() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",") == ["cpu"]
    return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def retain_freed_memory() -> bool:
    """Switches glibc to one arena without mmap or trimming; True if it did. Call it before
    JAX starts its threads (before the first computation): a thread that has already allocated
    keeps the arena it has."""
    if os.environ.get("LLMJAX_HOST_MALLOC", "") == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not _cpu_only():
        return False
    libc = ctypes.CDLL("libc.so.6")
    # Trimming off first: a half-applied setting must never give memory back more often.
    return all(libc.mallopt(param, value) == 1 for param, value in
               ((_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0)))
