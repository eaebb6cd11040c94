"""How long an asynchronous checkpoint save blocks the training loop, against a step's time.

    .venv/bin/python scripts/bench_checkpoint.py [--config configs/default.py] [--saves 5] [--every 100]

Prints the median train-step time, the median time the loop spends inside `save()` (the
device-to-host copy; the write itself continues in the background), their ratio, and the
share of a run's time that saves block when it checkpoints every --every steps (the
performance issue's target: at most 5%). Saves are timed every third step here, so each one
overlaps the previous one's background write as closely as a real run ever would.
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
from llmjax.checkpoint import Checkpointer, metadata
from llmjax.data import pipeline
from llmjax.run import bootstrap
from llmjax.train.objectives.fields import synthetic_batch

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config to measure.")
_SAVES = flags.DEFINE_integer("saves", 5, "Saves to time.")
_EVERY = flags.DEFINE_integer("every", 100, "Checkpoint interval the run's share is stated for.")


def main(_):
    config = _CONFIG.value
    run = bootstrap(config)
    train_fn, _ = run.compile_steps()
    state = run.create_state()
    batch = pipeline.to_device(synthetic_batch(run.batch_fields(), config.model.vocab_size),
                               run.batch_shardings())
    step_times, blocked = [], []
    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = Checkpointer(Path(tmp) / "checkpoints", config, log=lambda *_: None)
        for step in range(1, 3 * _SAVES.value + 3):
            start = time.perf_counter()
            state, metrics = train_fn(state, batch)
            jax.block_until_ready(metrics)
            if step > 2:
                step_times.append(time.perf_counter() - start)
            if step > 2 and step % 3 == 0:  # Save every third step, while training goes on.
                start = time.perf_counter()
                checkpointer.save(step, state, lambda step=step: metadata(step, step, 0.0, config, 0.0), force=True)
                blocked.append(time.perf_counter() - start)
        checkpointer.close()
    state_bytes = sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))
    step_s, blocked_s = statistics.median(step_times), statistics.median(blocked)
    print(f"state size:             {state_bytes / 2**20:.1f} MiB (params + optimizer state)")
    print(f"train step (median):    {step_s * 1000:.1f} ms over {len(step_times)} steps")
    print(f"save blocks loop for:   {blocked_s * 1000:.1f} ms median over {len(blocked)} saves "
          f"(max {max(blocked) * 1000:.1f} ms)")
    print(f"blocked / step:         {100 * blocked_s / step_s:.1f}%")
    print(f"saving every {_EVERY.value} steps:  {100 * blocked_s / (blocked_s + _EVERY.value * step_s):.2f}% "
          f"of the run's time blocked")


if __name__ == "__main__":
    cpu_runtime.configure()  # As every llmjax command does, before JAX starts.
    app.run(main)
