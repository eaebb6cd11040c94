"""Named benchmark configs and one measurement of the real train step on synthetic data.

The step measured is the one `llmjax-train` runs: built by `train.compile.lower_train_step`
with the same shardings, optimizer and donation, only fed random tokens instead of a corpus
(data loading is not what is measured; `train.loop` overlaps it with compute).
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from llmjax import flops
from llmjax.parallel.mesh import build_mesh
from llmjax.parallel.rules import batch_sharding
from llmjax.presets import compose
from llmjax.train.compile import BATCH_KEYS, lower_train_step
from llmjax.train.optimizer import build_optimizer
from llmjax.train.resume import abstract_state
from llmjax.train.state import create_train_state, state_shardings

# name -> (model preset, overrides). Steps and warm-up are the runner's business.
BENCHMARKS = {
    # The comparison point: 36M parameters, bf16 compute, fp32 params, AdamW, no remat.
    "bench36m": ("bench36m", {"data.seq_len": 512, "train.global_batch_size": 8}),
    # The default training run's shape, for quick checks.
    "5m": ("5m", {"data.seq_len": 256, "train.global_batch_size": 16}),
    # Seconds, for tests of the benchmark itself.
    "tiny": ("tiny", {"data.seq_len": 64, "train.global_batch_size": 8}),
}


def benchmark_config(name: str, overrides: dict | None = None):
    preset, settings = BENCHMARKS[name]
    return compose(preset, overrides={"train.steps": 1000, "model.remat": "none"} | settings
                   | (overrides or {}))


def synthetic_batch(config, sharding, seed: int = 0) -> dict:
    """Uniform random tokens, one document per row: the shapes and dtypes of a real batch."""
    shape = (config.train.global_batch_size, config.data.seq_len)
    rng = np.random.default_rng(seed)
    host = {"inputs": rng.integers(0, config.model.vocab_size, shape, dtype=np.int32),
            "targets": rng.integers(0, config.model.vocab_size, shape, dtype=np.int32),
            "positions": np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape),
            "segment_ids": np.zeros(shape, np.int32),
            "weights": np.ones(shape, np.float32)}
    return {key: jax.device_put(host[key], sharding) for key in BATCH_KEYS}


def peak_memory_bytes(compiled) -> int:
    """The compiled step's peak memory per device, as its memory analysis reports it."""
    m = compiled.memory_analysis()
    peak = getattr(m, "peak_memory_in_bytes", 0)
    return int(peak or m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def compile_train_step(config):
    """(compiled step, mesh, abstract state, seconds spent lowering and compiling)."""
    mesh = build_mesh(config)
    tx = build_optimizer(config)
    target = abstract_state(config, tx, state_shardings(config, tx, mesh))
    start = time.perf_counter()
    compiled = lower_train_step(config, tx, mesh, target).compile()
    return compiled, mesh, target, time.perf_counter() - start


def run(config, steps: int = 10, warmup: int = 3, peak_flops: float | None = None) -> dict:
    """Compiles the step, runs `warmup` untimed and `steps` timed steps, and returns the figures.
    Each step is timed to completion (the loss is fetched), as the training loop does."""
    compiled, mesh, target, compile_seconds = compile_train_step(config)
    state = create_train_state(config, build_optimizer(config),
                               jax.tree.map(lambda x: x.sharding, target))
    batch = synthetic_batch(config, batch_sharding(mesh))
    times, loss = [], float("nan")
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        loss = float(metrics["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - start)
    tokens = config.train.global_batch_size * config.data.seq_len
    step_seconds = statistics.median(times)
    tokens_per_sec = tokens / step_seconds
    devices = jax.device_count()
    flops_per_sec = tokens_per_sec * flops.flops_per_token(config.model, config.data.seq_len)
    return {"step_seconds": step_seconds, "step_seconds_all": times,
            "tokens_per_sec": tokens_per_sec, "tflops_per_device": flops_per_sec / devices / 1e12,
            "mfu": flops_per_sec / peak_flops if peak_flops else None,
            "compile_seconds": compile_seconds, "peak_memory_bytes": peak_memory_bytes(compiled),
            "final_loss": loss, "params": flops.param_count(config.model), "devices": devices,
            "platform": jax.devices()[0].platform, "jax": jax.__version__}
