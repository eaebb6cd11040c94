"""Will this run fit, and how fast will it go? Answered on a CPU before any cluster time.

The train step is compiled ahead of time for the target's device count (fake CPU devices
stand in for the accelerators), from abstract shapes: no weight is allocated. The state's
bytes per device follow from its shardings; the compiled executable's memory analysis adds the
activations and temporaries; the step's FLOPs over the target's peak give the step time.
"""

from __future__ import annotations

import dataclasses

import jax

from llmjax import flops
from llmjax.parallel.describe import shard_bytes
from llmjax.run import bootstrap

GB = 1e9
# Memory per device (bytes) and the data-sheet bf16 peak name in flops.PEAK_BF16_FLOPS.
TARGETS = {
    "h100": (80 * GB, "H100"), "h200": (141 * GB, "H200"), "a100": (80 * GB, "A100"),
    "v4": (32 * GB, "TPU v4"), "v5e": (16 * GB, "TPU v5e"), "v5p": (95 * GB, "TPU v5p"),
    "v6e": (32 * GB, "TPU v6e"),
}
ASSUMED_MFU = 0.4  # A typical well-tuned large run; the prediction scales as 1/MFU.


@dataclasses.dataclass
class Plan:
    target: str
    devices: int
    mesh: dict
    params_bytes: float  # Per device, from the shardings.
    optimizer_bytes: float
    temp_bytes: float  # Activations and temporaries of the compiled step, per device.
    total_bytes: float
    memory_bytes: float
    flops_per_step: float
    step_seconds: float  # At ASSUMED_MFU of the target's peak.

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.memory_bytes

    def report(self) -> str:
        gb = lambda b: f"{b / GB:8.2f} GB"  # noqa: E731
        verdict = "fits" if self.fits else "DOES NOT FIT"
        return "\n".join([
            f"target {self.target}: {self.devices} devices, mesh {self.mesh}",
            "per-device memory:",
            f"  params             {gb(self.params_bytes)}",
            f"  optimizer state    {gb(self.optimizer_bytes)}",
            f"  activations + temp {gb(self.temp_bytes)}",
            f"  total              {gb(self.total_bytes)}  of {self.memory_bytes / GB:.0f} GB: {verdict}",
            f"FLOPs per step:      {self.flops_per_step:.3e}",
            f"predicted step time: {self.step_seconds:.3f} s at {ASSUMED_MFU:.0%} MFU "
            f"({self.step_seconds * ASSUMED_MFU:.3f} s at 100%)"])


def per_device_bytes(tree) -> float:
    """Bytes one device holds of a tree of sharded abstract arrays (the largest shard)."""
    return sum(shard_bytes(x) for x in jax.tree.leaves(tree))


def plan(config, target: str) -> Plan:
    memory, chip = TARGETS[target]
    run = bootstrap(config)
    mesh, state = run.mesh, run.state
    compiled = run.lower_train_step().compile()
    analysis = compiled.memory_analysis()
    params, optimizer = per_device_bytes(state.params), per_device_bytes(state.opt_state)
    temp = float(analysis.temp_size_in_bytes)
    tokens = config.train.global_batch_size * config.data.seq_len
    step_flops = flops.flops_per_token(config) * tokens
    peak = flops.PEAK_BF16_FLOPS[chip] * mesh.devices.size
    return Plan(target=target, devices=mesh.devices.size, mesh=dict(mesh.shape), params_bytes=params,
                optimizer_bytes=optimizer, temp_bytes=temp, total_bytes=params + optimizer + temp,
                memory_bytes=memory, flops_per_step=step_flops,
                step_seconds=step_flops / (peak * ASSUMED_MFU))
