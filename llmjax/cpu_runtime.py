"""Process settings that make XLA:CPU train fast: they must be made before JAX starts its
backend, so every llmjax command makes them first (`configure`), and so does the test suite.

Each was found by profiling a bench36m step on a 2-core CPU (`scripts/benchmark.py`):

Host memory. XLA:CPU allocates an execution's temporaries as one block (2.4 GB for a bench36m
step) and frees it when the step ends. glibc serves a block that large from any thread but the
main one with a fresh `mmap` whatever its tunables say, and unmaps it on free: every step then
faulted its whole working set back in, page by zeroed page (590k faults and 1.1 s of kernel
time per 5.3 s step). With every thread on glibc's main arena, `mmap` off and trimming off, the
freed block is reused as it is: no faults, ~10% faster steps. The price is that the process
keeps its peak heap until it exits, as a training process does anyway.
`LLMJAX_HOST_MALLOC=system` leaves the allocator alone.

oneDNN matmuls. XLA:CPU runs dots through XNNPACK's YNN fusions, which take a transposed
operand at half speed (a [4096,512]x[512,1536] bf16 product: 21 ms, its weight gradient
x^T dy: 42 ms). Backward passes are mostly such products; XLA's oneDNN custom call runs them
at full speed (17 ms), and the step gets ~15% faster. The cost: XLA cannot serialize an
executable that calls oneDNN, so on CPU the persistent compilation cache does not keep the
train and eval steps and a restarted run compiles them again (seconds at this scale; JAX's
warning about each failed cache write is silenced). Flags already in XLA_FLAGS win:
`XLA_FLAGS=--xla_cpu_experimental_onednn_custom_call=false` keeps the steps cacheable, and
measures the step without oneDNN.

Copy insertion. XLA:CPU's default copy insertion copies every donated buffer it cannot prove
unaliased (the optimizer state, 270 MiB of copies per bench36m step); with region analysis it
proves them away, and the step gets ~4% faster.

Mixed-precision products. XLA:CPU's float normalization (`float-normalization-bf16`) rewrites
every bf16 op its backend does not list as bf16-capable into an fp32 op between converts. A
product of bf16 operands with an fp32 result (the fp32 logits) is one of them: it became an
fp32 matmul at half the speed (161 against 81 ms for bench36m's output projection), although
the YNN dot library runs bf16 x bf16 -> fp32 natively once the pass leaves it alone. Without
the pass the bf16 elementwise ops compile to LLVM's bf16 arithmetic, which rounds after each
op (as PyTorch's bf16 and the accelerators do) where the pass had kept chains in fp32; the
default run's losses move in the second decimal (val 3.6020 -> 3.6225). A bf16 *reduction*
would now accumulate in bf16, so llmjax writes every sum of bf16 values with an fp32
accumulator (the bias gradient in `Projection`, grouped attention's key/value repeat, MoE's
combine), and tests/test_cpu_runtime.py fails on any bf16 reduction in a family's train step.
Chains of bf16 transcendental ops are slow as well as rounded (LLVM's bf16 exp, tanh and
divide), so the MLP activations run in fp32 (`llmjax/model/layers/activation.py`), and the
same test file fails on a bf16 exp, tanh or divide in those steps.
One place wants the pass: a one-row product (decoding a single sequence),
which XLA:CPU runs as an fp32 matrix-vector product. The pass upcasts it early enough for the
loop-invariant weights to be converted once, before the decode loop; without it the upcast
comes after that hoisting and every token converted every weight (bf16 decoding at batch 1:
6.1 against 9.8 ms per token). `with_float_normalization` gives that one compilation the pass.

Only for CPU-only JAX installs (with an accelerator the step does not run on the host), and
the allocator only on glibc.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import warnings

CPU_XLA_FLAGS = {"xla_cpu_use_onednn": "true", "xla_cpu_experimental_onednn_custom_call": "true",
                 "xla_cpu_copy_insertion_use_region_analysis": "true",
                 "xla_disable_hlo_passes": "float-normalization-bf16"}

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def _cpu_only() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",") == ["cpu"]
    return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def add_xla_flags() -> None:
    """Appends `CPU_XLA_FLAGS` to XLA_FLAGS, except those it already sets."""
    current = os.environ.get("XLA_FLAGS", "")
    extra = [f"--{name}={value}" for name, value in CPU_XLA_FLAGS.items()
             if f"--{name}=" not in current]
    os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
    if "--xla_cpu_experimental_onednn_custom_call=true" in os.environ["XLA_FLAGS"]:
        warnings.filterwarnings("ignore", message="Error writing persistent compilation cache entry")


def with_fake_devices(xla_flags: str, count: int) -> str:
    """`xla_flags` with `count` fake CPU devices in place of any count it set: a launcher that
    splits the host into processes keeps every other flag its user gave (oneDNN off, dumps)."""
    kept = [arg for arg in xla_flags.split() if not arg.startswith("--xla_force_host_platform_device_count=")]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={count}"])


def values_product_dtype():
    """The result dtype the cached decoding's probabilities x values product asks for: its
    inputs' (None), except where oneDNN's custom calls are off (the cacheable setting above).
    XLA:CPU's own dot emitter then takes the small batched products of a decode step and
    refuses a bf16 result (a RET_CHECK failure); fp32 compiles. Not fp32 always: with oneDNN
    on, the fp32 result made bf16 decoding at batch 16 20% slower (605 against 770 tokens/s,
    scripts/bench_generate.py)."""
    if _cpu_only() and "--xla_cpu_experimental_onednn_custom_call=false" in os.environ.get("XLA_FLAGS", ""):
        return "float32"
    return None


def with_float_normalization() -> dict:
    """`jax.jit` compiler options that run `float-normalization-bf16` again (see the module's
    docstring), keeping any other pass XLA_FLAGS disables; none off the CPU."""
    if not _cpu_only():
        return {}
    disabled = [arg.split("=", 1)[1] for arg in os.environ.get("XLA_FLAGS", "").split()
                if arg.startswith("--xla_disable_hlo_passes=")]
    passes = [name for value in disabled[-1:] for name in value.split(",") if name
              and name != "float-normalization-bf16"]
    return {"xla_disable_hlo_passes": ",".join(passes)}


def for_one_call() -> dict:
    """`jax.jit` compiler options for a computation a process runs once, the train state's
    initialiser: LLVM at -O2 instead of XLA:CPU's -O3, whose passes spend seconds on the
    initialiser's random-number and inverse-error-function fusions for nothing at one call.
    configs/default.py compiled in 9.2 against 4.0 s and ran in 0.06 s either way; the tiny T5
    compiled in 11.3 against 4.4 s, configs/125m.py in 27 against 12 s (running 1.5 against
    1.8 s). The parameters came out bit-identical for every family's tiny config and
    configs/default.py, on one device and on eight; the MoE router of configs/moe_tiny.py had
    22 of its 512 values one rounding apart. None off the CPU."""
    return {"xla_backend_optimization_level": 2} if _cpu_only() else {}


def retain_freed_memory() -> bool:
    """Switches glibc to one arena without mmap or trimming; True if it did. A thread that has
    already allocated keeps the arena it has, hence: before JAX starts its threads."""
    if os.environ.get("LLMJAX_HOST_MALLOC", "") == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return all(libc.mallopt(param, value) == 1 for param, value in
               ((_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0)))


def configure() -> None:
    """Both settings, on a CPU-only install; call it before the first JAX computation."""
    if _cpu_only():
        add_xla_flags()
        retain_freed_memory()
