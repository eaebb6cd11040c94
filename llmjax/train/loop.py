"""The effectful shell around the pure step: data in, compiled steps, progress, metrics.

Order matters for failing fast: the config and workdir are checked first, then the corpus is
prepared and the steps are compiled; only then is the first file written to the workdir.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from llmjax import config as config_lib
from llmjax import flops
from llmjax.data import pipeline
from llmjax.data.prepare import default_cache_dir, prepare_corpus
from llmjax.metrics import MetricsWriter
from llmjax.parallel.mesh import build_mesh
from llmjax.parallel.rules import batch_sharding
from llmjax.train.optimizer import build_optimizer
from llmjax.train.state import create_train_state, state_shardings
from llmjax.train.step import eval_step, train_step
from llmjax.workdir import check_workdir, write_config

BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "weights")


def batch_spec(config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (config.train.global_batch_size, config.data.seq_len)
    rows = batch_sharding(mesh)
    return {key: jax.ShapeDtypeStruct(shape, jnp.float32 if key == "weights" else jnp.int32,
                                      sharding=rows) for key in BATCH_KEYS}


def compile_steps(config, tx, mesh, state):
    """AOT-compiles the train step (state donated) and the eval step with explicit shardings,
    so the run never recompiles and the compile time is measured on its own."""
    shardings = jax.tree.map(lambda x: x.sharding, state)
    batch = batch_spec(config, mesh)
    rows = batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    train = jax.jit(functools.partial(train_step, config=config, tx=tx),
                    in_shardings=(shardings, rows), out_shardings=(shardings, replicated),
                    donate_argnums=0)
    evaluate = jax.jit(functools.partial(eval_step, config=config),
                       in_shardings=(shardings.params, rows), out_shardings=replicated)
    with jax.set_mesh(mesh):
        return train.lower(state, batch).compile(), evaluate.lower(state.params, batch).compile()


def evaluate(eval_fn, params, batches) -> float:
    sums = [eval_fn(params, batch) for batch in batches]
    nll, count = np.sum(jax.device_get(sums), axis=0)
    return float(nll / max(count, 1.0))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def train(config, workdir: str, log=functools.partial(print, flush=True)) -> dict:
    """Trains from scratch as `config` says; returns the final figures (also in summary.json)."""
    config_lib.validate(config, jax.device_count())
    run_dir = check_workdir(workdir)
    t, seq = config.train, config.data.seq_len
    log(f"config:\n{config}")
    log(f"parameters: {flops.param_count(config.model):,} "
        f"({flops.non_embedding_params(config.model):,} non-embedding)")

    corpus = prepare_corpus(config.data, config.model.vocab_size, log)
    mesh = build_mesh(config)
    log(f"mesh: {dict(mesh.shape)} over {mesh.devices.size} {jax.devices()[0].platform} devices")
    tx = build_optimizer(config)
    state = create_train_state(config, tx, state_shardings(config, tx, mesh))
    start = time.perf_counter()
    train_fn, eval_fn = compile_steps(config, tx, mesh, state)
    log(f"compiled train and eval steps in {time.perf_counter() - start:.1f}s")

    rows = batch_sharding(mesh)
    train_data = pipeline.train_batches(corpus.train_tokens, seq, corpus.eos_id,
                                        t.global_batch_size, config.seed)
    val_batches = [pipeline.to_device(b, rows) for b in pipeline.eval_batches(
        corpus.val_tokens, seq, corpus.eos_id, t.global_batch_size, t.eval_batches)]
    cache = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else default_cache_dir()
    peak, peak_source = flops.host_peak_flops(cache, config.model.dtype)
    log(f"peak: {peak / 1e12:.3f} TFLOP/s ({peak_source})")
    model_flops_per_token = flops.flops_per_token(config.model, seq)
    tokens_per_step = t.global_batch_size * seq

    write_config(run_dir, config)
    writer = MetricsWriter(run_dir, enabled=jax.process_index() == 0)
    pending, interval_start, run_start = [], time.perf_counter(), time.perf_counter()
    train_loss = val_loss = float("nan")
    for step in range(1, t.steps + 1):
        state, metrics = train_fn(state, pipeline.to_device(train_data[step - 1], rows))
        pending.append(metrics)
        if step % t.log_every == 0 or step == t.steps:
            fetched = jax.device_get(pending)
            values = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
            elapsed = time.perf_counter() - interval_start
            tokens_per_sec = len(pending) * tokens_per_step / elapsed
            values.update(tokens_per_sec=tokens_per_sec,
                          tflops_per_device=tokens_per_sec * model_flops_per_token / mesh.devices.size / 1e12,
                          mfu=tokens_per_sec * model_flops_per_token / peak,
                          skipped=sum(int(m["skipped"]) for m in fetched))
            train_loss = values["loss"]
            writer.write(step, "train", values)
            eta = (t.steps - step) * elapsed / len(pending)
            log(f"step {step:>6}/{t.steps} | loss {values['loss']:.4f} | lr {values['learning_rate']:.2e} "
                f"| grad_norm {values['grad_norm']:.3f} | {tokens_per_sec:,.0f} tok/s "
                f"| MFU {100 * values['mfu']:.1f}% | ETA {_duration(eta)}"
                + (f" | skipped {values['skipped']}" if values["skipped"] else ""))
            pending, interval_start = [], time.perf_counter()
        if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
            val_loss = evaluate(eval_fn, state.params, val_batches)
            writer.write(step, "val", {"loss": val_loss, "perplexity": math.exp(min(val_loss, 50))})
            log(f"step {step:>6}/{t.steps} | val loss {val_loss:.4f} | val ppl {math.exp(min(val_loss, 50)):.2f}")
            if not pending:  # Keep evaluation time out of the next throughput figure.
                interval_start = time.perf_counter()
    writer.close()
    summary = {"steps": t.steps, "final_train_loss": train_loss, "final_val_loss": val_loss,
               "unigram_entropy": corpus.manifest["unigram_entropy_nats"],
               "skipped_steps": int(state.skipped_steps),
               "wall_seconds": time.perf_counter() - run_start}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"done in {_duration(summary['wall_seconds'])}: train loss {train_loss:.4f}, "
        f"val loss {val_loss:.4f} (unigram entropy of the corpus: "
        f"{summary['unigram_entropy']:.4f} nats/token)")
    return summary
