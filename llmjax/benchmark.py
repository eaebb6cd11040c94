"""Named benchmark configs and one measurement of the real train step on synthetic data.

The step measured is the one `llmjax-train` runs: built by `llmjax.run.bootstrap`
with the same shardings, optimizer and donation, only fed random tokens instead of a corpus
(data loading is not measured here: it costs about 1 ms of a bench36m step, see the README).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from llmjax import flops
from llmjax.model import registry
from llmjax.presets import compose
from llmjax.run import bootstrap
from llmjax.train.objectives import fields

# name -> (model preset, overrides). Steps and warm-up are the runner's business.
BENCHMARKS = {
    # The comparison point: 36M parameters, bf16 compute, fp32 params, AdamW, no remat,
    # and otherwise the defaults every run gets (scanned layers, fp32 logits), as every entry
    # here. What the fastest settings gain over them, measured on a 2-core CPU in one process
    # (scripts/benchmark.py bench36m --variant fastest:model.fp32_logits=False,
    # model.scan_layers=False; the README's table): nothing (0.998x) since the fp32-logit
    # product runs on XLA:CPU's bf16 kernel (llmjax/cpu_runtime.py). The loss over all positions
    # at once is 1.03x faster than in 128-position chunks, which recompute the logits backward.
    "bench36m": ("bench36m", {"data.seq_len": 512, "train.global_batch_size": 8}),
    # GPT-2 at bench36m's scale and step shape (learned positions, LayerNorm, GELU MLP of 4x).
    "gpt2-bench36m": ("gpt2-bench36m", {"data.seq_len": 512, "train.global_batch_size": 8}),
    # BERT at bench36m's scale and step shape (MLM: 15% of the positions scored, the logits of
    # all computed, as BERT's head does).
    "bert-bench36m": ("bert-bench36m", {"data.seq_len": 512, "train.global_batch_size": 8}),
    # T5 at bench36m's width: 4 encoder + 4 decoder layers, an encoder of 512 tokens and span
    # corruption's decoder of 114 (T5's C4 pretraining shape).
    "t5-bench36m": ("t5-bench36m", {"data.seq_len": 512, "train.global_batch_size": 8}),
    # bench36m's MoE variant: every MLP 8 experts of half its width, top-2, so the same active
    # parameters and FLOPs per token (92M parameters in all). Dropless (grouped matmuls), the
    # default; --variant capacity:model.capacity_factor=1.25 measures capacity dispatch beside it.
    "moe-bench36m": ("bench36m_moe", {"data.seq_len": 512, "train.global_batch_size": 8}),
    # The LSTM baseline at bench36m's scale and step shape (its recurrence is a scan over time).
    "lstm-bench36m": ("lstm-bench36m", {"data.seq_len": 512, "train.global_batch_size": 8}),
    # The default training run's shape, for quick checks.
    "5m": ("5m", {"data.seq_len": 256, "train.global_batch_size": 16}),
    # The LSTM baseline at the default run's shape (scripts/bench_lstm.py times it against torch).
    "lstm-5m": ("lstm-5m", {"data.seq_len": 256, "train.global_batch_size": 16}),
    # Seconds, for tests of the benchmark itself.
    "tiny": ("tiny", {"data.seq_len": 64, "train.global_batch_size": 8}),
}


def benchmark_config(name: str, overrides: dict | None = None):
    preset, settings = BENCHMARKS[name]
    family, _ = registry.find_preset(preset)
    no_remat = {"model.remat": "none"} if "remat" in family.defaults() else {}
    return compose(preset, overrides={"train.steps": 1000, **no_remat} | settings | (overrides or {}))


def synthetic_batch(run, seed: int = 0) -> dict:
    """Uniform random tokens, one document per row, in the objective's batch layout."""
    host = fields.synthetic_batch(run.batch_fields(), run.config.model.vocab_size, seed)
    shardings = run.batch_shardings()
    return {key: jax.device_put(value, shardings[key]) for key, value in host.items()}


def peak_memory_bytes(compiled) -> int:
    """The compiled step's memory per device from its memory analysis: arguments and outputs
    (less those donated and aliased) plus temporaries, all live at once at worst. Not the
    analysis' own `peak_memory_in_bytes`: XLA:CPU fills that with the argument bytes alone."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def compile_train_step(config):
    """(compiled step, the run, seconds spent lowering and compiling)."""
    run = bootstrap(config)
    start = time.perf_counter()
    compiled = run.lower_train_step().compile()
    return compiled, run, time.perf_counter() - start


class _Runner:
    """One config's compiled step, state and batch; `step()` runs one step to completion (the
    loss is fetched, as the training loop does) and returns its seconds."""

    def __init__(self, config):
        self.compiled, run, self.compile_seconds = compile_train_step(config)
        self.state = run.create_state()
        self.batch = synthetic_batch(run)
        self.times, self.loss = [], float("nan")

    def step(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.compiled(self.state, self.batch)
        self.loss = float(metrics["loss"])
        return time.perf_counter() - start


class _MatmulProbe:
    """The bf16 matmul of `flops.measure_matmul_peak`, timed once per round beside the steps:
    the host's peak as it is at that moment, so that MFU against it holds still while other
    processes load the host (both are slowed alike)."""

    def __init__(self, size: int = 2048):
        self.flops = 2 * size**3
        self.a, self.b = (jax.random.normal(jax.random.key(i), (size, size), jnp.bfloat16)
                          for i in range(2))
        self.matmul = jax.jit(lambda x, y: x @ y)
        self.times = []

    def step(self) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            self.matmul(self.a, self.b).block_until_ready()
            best = min(best, time.perf_counter() - start)
        return best


def alternate(configs: dict, steps: int = 10, warmup: int = 3) -> dict:
    """Several configs compiled in one process and stepped in turns, one step each, and the
    matmul probe (key "matmul_probe") between them: on a shared host the load then weighs on
    all alike, so ratios of times from one round are fair even while absolute times drift."""
    runners = {name: _Runner(config) for name, config in configs.items()}
    runners["matmul_probe"] = _MatmulProbe()
    for i in range(warmup + steps):
        for runner in runners.values():
            seconds = runner.step()
            if i >= warmup:
                runner.times.append(seconds)
    return runners


def figures(config, runner: _Runner, peak_flops: float | None = None,
            probe: _MatmulProbe | None = None) -> dict:
    """Median step time, tokens/s, TFLOP/s per device, MFU, compile time, peak memory; with the
    probe, also the median over rounds of MFU against that round's matmul speed."""
    tokens = config.train.global_batch_size * config.data.seq_len
    per_step = tokens * flops.flops_per_token(config)
    step_seconds = statistics.median(runner.times)
    tokens_per_sec = tokens / step_seconds
    devices = jax.device_count()
    result = {"step_seconds": step_seconds, "step_seconds_all": runner.times,
              "tokens_per_sec": tokens_per_sec,
              "tflops_per_device": per_step / step_seconds / devices / 1e12,
              "mfu": per_step / step_seconds / peak_flops if peak_flops else None,
              "compile_seconds": runner.compile_seconds,
              "peak_memory_bytes": peak_memory_bytes(runner.compiled), "final_loss": runner.loss,
              "params": flops.param_count(config.model), "devices": devices,
              "platform": jax.devices()[0].platform, "jax": jax.__version__}
    if probe is not None:
        result["probe_tflops"] = [probe.flops / t / 1e12 for t in probe.times]
        result["mfu_vs_round_peak"] = statistics.median(
            (per_step / s) / (probe.flops / p) for s, p in zip(runner.times, probe.times))
    return result


def run(config, steps: int = 10, warmup: int = 3, peak_flops: float | None = None) -> dict:
    """Compiles the step, runs `warmup` untimed and `steps` timed steps, returns `figures`."""
    runners = alternate({"run": config}, steps, warmup)
    return figures(config, runners["run"], peak_flops, runners["matmul_probe"])
