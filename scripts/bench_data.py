"""Whether the data pipeline can keep training fed, and how fast preparation is.

    .venv/bin/python scripts/bench_data.py [--config configs/default.py] [--steps 200] [--prepare]

Prints the tokens/s the pipeline delivers as sharded device batches (Grain random access,
packing, segment ids, host-to-device placement) for the config's batch shape, the tokens/s the
config's train step consumes on this machine, and their ratio. With --prepare it also prepares
the stdlib corpus afresh into a temporary directory and prints MB/s and tokens/s.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from llmjax import cpu_runtime
from llmjax.data import sources
from llmjax.data.dataset import cache_dir, open_dataset, resolve
from llmjax.data.prepare import PrepareOptions, prepare
from llmjax.run import bootstrap

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config whose data and step to measure.")
_STEPS = flags.DEFINE_integer("steps", 200, "Batches to load for the pipeline figure.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 8, "Train steps to time (after one warm-up step).")
_PREPARE = flags.DEFINE_bool("prepare", False, "Also time a fresh preparation of the stdlib corpus.")


def pipeline_tokens_per_second(config, datasets, run) -> float:
    batches = run.train_batches(datasets)
    jax.block_until_ready(batches.device_batch(0))
    start = time.perf_counter()
    for step in range(1, _STEPS.value + 1):
        jax.block_until_ready(batches.device_batch(step * 7919))  # Spread over the whole epoch.
    return _STEPS.value * config.train.global_batch_size * config.data.seq_len / (time.perf_counter() - start)


def train_tokens_per_second(config, datasets, run) -> float:
    train_fn, _ = run.compile_steps()
    state = run.create_state()
    batches = run.train_batches(datasets)
    loaded = [batches.device_batch(step) for step in range(_TRAIN_STEPS.value + 1)]
    state, metrics = train_fn(state, loaded[0])
    jax.block_until_ready(metrics)
    times = []
    for batch in loaded[1:]:
        start = time.perf_counter()
        state, metrics = train_fn(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return config.train.global_batch_size * config.data.seq_len / statistics.median(times)


def main(_):
    config = _CONFIG.value
    cache = cache_dir(config)
    datasets = resolve(config.data, config.model.vocab_size, cache, log=lambda *_: None)
    run = bootstrap(config)
    delivered = pipeline_tokens_per_second(config, datasets, run)
    consumed = train_tokens_per_second(config, datasets, run)
    print(f"batch shape:              {config.train.global_batch_size} x {config.data.seq_len} tokens "
          f"over {run.mesh.devices.size} device(s)")
    print(f"pipeline delivers:        {delivered:,.0f} tokens/s (median of {_STEPS.value} device batches)")
    print(f"train step consumes:      {consumed:,.0f} tokens/s (median of {_TRAIN_STEPS.value} steps)")
    print(f"pipeline / training:      {delivered / consumed:.1f}x")
    if _PREPARE.value:
        with tempfile.TemporaryDirectory() as tmp:
            options = PrepareOptions(inputs=(str(sources.stdlib_root()),), pattern=config.data.glob,
                                     vocab_size=config.model.vocab_size, val_percent=config.data.val_percent)
            start = time.perf_counter()
            out = prepare(options, Path(tmp) / "stdlib", log=lambda *_: None, progress=False)
            seconds = time.perf_counter() - start
            manifest = open_dataset(out).manifest
        text_mb = sum(manifest["splits"][s]["bytes"] for s in ("train", "val")) / 2**20
        tokens = sum(manifest["splits"][s]["tokens"] for s in ("train", "val"))
        print(f"preparation (stdlib):     {text_mb:.1f} MB of text, {tokens:,} tokens in {seconds:.1f}s = "
              f"{text_mb / seconds:.2f} MB/s, {tokens / seconds:,.0f} tokens/s (tokenizer training included)")


if __name__ == "__main__":
    cpu_runtime.configure()  # As every llmjax command does, before JAX starts.
    app.run(main)
