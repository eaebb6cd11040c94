"""Model FLOPs and the hardware peak they are compared with (MFU).

FLOPs per token (training, forward + backward) follow the standard accounting of Kaplan et al.
and PaLM's appendix B (6 FLOPs per matmul weight and token, plus attention), with each
family's formula stated in its own folder (`llmjax/model/<family>/flops.py`); this module
looks it up by `config.model.family` and measures or looks up the peak.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp

from llmjax.model import registry

# Dense bf16 peak FLOP/s per chip from the vendors' data sheets (no sparsity).
PEAK_BF16_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def non_embedding_params(model_config) -> int:
    return registry.of(model_config).flops.non_embedding_params(model_config)


def active_non_embedding_params(model_config) -> int:
    """What one token computes with: fewer than all for a mixture of experts."""
    family = registry.of(model_config).flops
    return getattr(family, "active_non_embedding_params", family.non_embedding_params)(model_config)


def param_count(model_config) -> int:
    return registry.of(model_config).flops.param_count(model_config)


def flops_per_token(config) -> float:
    """Training FLOPs per (encoder) token of a run by its family's formula (stated in its
    flops.py), at the run's shapes: an encoder-decoder's decoder at the length its objective
    feeds it (span corruption's targets at its rates, a task's `targets_length`), which the
    model section alone does not say."""
    from llmjax.train import objectives  # noqa: PLC0415 - objectives import the model registry.

    decoder = objectives.of(config).impl().fields(config, 1).get("decoder_inputs")
    lengths = {"decoder_len": decoder.shape[1]} if decoder is not None else {}
    return registry.of(config.model).flops.flops_per_token(config.model, config.data.seq_len, **lengths)


def measure_matmul_peak(dtype=jnp.bfloat16, size: int = 2048, min_seconds: float = 2.0) -> float:
    """Best FLOP/s of a square matmul on the default device: what this host can do at best.

    The best of many repeats (at least 20, for at least `min_seconds`) rather than a mean: on a
    shared host other processes only ever slow a repeat down, so the fastest one is the closest
    to the hardware. Inputs are random normals, as in training.
    A Zen 4 core (avx512_bf16, no AMX) retires one 512-bit VDPBF16PS, 64 FLOPs, per cycle, so
    two cores at ~3 GHz top out near 0.4 TFLOP/s in bf16; figures near 1 TFLOP/s on two cores
    need AMX (Sapphire Rapids and later)."""
    a, b = (jax.random.normal(jax.random.key(i), (size, size), dtype) for i in range(2))
    matmul = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        matmul(a, b).block_until_ready()
    times, start = [], time.perf_counter()
    while len(times) < 20 or time.perf_counter() - start < min_seconds:
        begin = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - begin)
    return 2 * size**3 / min(times)


def host_peak_flops(cache_dir, dtype: str) -> tuple[float, str]:
    """(peak FLOP/s of the whole host, where the figure came from). Accelerators: the data-sheet
    peak per chip times the local chips. CPU: a matmul benchmark, measured once and cached."""
    devices = jax.local_devices()
    kind = devices[0].device_kind
    if devices[0].platform != "cpu":
        for name, peak in PEAK_BF16_FLOPS.items():
            if name.lower() in kind.lower():
                return peak * len(devices), f"data sheet ({name} bf16)"
        return float("nan"), f"unknown device kind {kind!r}"
    path = cache_dir / "peak_flops.json"
    key = f"{kind}|{jax.__version__}|{dtype}|best-of-random-2048"
    cached = json.loads(path.read_text()) if path.exists() else {}
    if key not in cached:
        cached[key] = measure_matmul_peak(jnp.dtype(dtype))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cached, indent=1))
    return cached[key], f"measured {dtype} matmul, cached in {path}"
