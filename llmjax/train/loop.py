"""The effectful shell around the pure step: data in, compiled steps, checkpoints, metrics.

Order matters for failing fast: the config, workdir and `init_from` are checked first, then
the corpus is prepared and the steps are compiled against abstract shapes; only then is the
first file written to the workdir and any state allocated.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import jax
import numpy as np

from llmjax import config as config_lib
from llmjax import flops
from llmjax.checkpoint import CheckpointError, Checkpointer, metadata
from llmjax.data import pipeline
from llmjax.data.dataset import check_tokenizer, default_cache_dir, resolve
from llmjax.metrics import MetricsWriter
from llmjax.parallel import distributed
from llmjax.parallel.mesh import build_mesh
from llmjax.parallel.rules import batch_sharding
from llmjax.train.guard import DivergenceGuard
from llmjax.train.optimizer import build_optimizer
from llmjax.train.preemption import EXIT_PREEMPTED, PreemptionFlag
from llmjax.train.resume import abstract_state, initial_state, parse_init_from, state_from_checkpoint
from llmjax.parallel.describe import sharding_table
from llmjax.train.state import param_logical_axes, state_shardings
from llmjax.train.compile import compile_steps
from llmjax.train.evaluate import Evaluator
from llmjax.workdir import check_workdir, write_config, write_status

class Preempted(SystemExit):
    """Raised after the preemption checkpoint is on disk; its code tells the scheduler to retry."""

    def __init__(self):
        super().__init__(EXIT_PREEMPTED)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def train(config, workdir: str, log=functools.partial(print, flush=True),
          print_sharding: bool = False) -> dict | None:
    """Trains as `config` says, resuming from the workdir's checkpoints if it has any; returns
    the final figures (also written to summary.json). With `print_sharding`, prints where each
    parameter lives on the mesh and returns without training."""
    config_lib.validate(config, jax.device_count(), jax.process_count())
    if not distributed.is_primary():
        log = lambda *_, **__: None  # noqa: E731 - one process speaks for the job.
    run_dir, changes = check_workdir(workdir, config)
    init_source = parse_init_from(config.checkpoint.init_from)
    t, seq = config.train, config.data.seq_len
    log(f"config:\n{config}")
    if changes:
        log("config changes since this workdir's last start: " +
            "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    log(f"parameters: {flops.param_count(config.model):,} "
        f"({flops.non_embedding_params(config.model):,} non-embedding)")

    mesh = build_mesh(config)
    log(f"mesh: {dict(mesh.shape)} over {mesh.devices.size} {jax.devices()[0].platform} devices")
    tx = build_optimizer(config)
    target = abstract_state(config, tx, state_shardings(config, tx, mesh))
    if print_sharding:  # Look, then stop: nothing is compiled or written.
        log(sharding_table(param_logical_axes(config), target.params))
        return None
    cache = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else default_cache_dir()
    if distributed.is_primary():  # The others then read the cache it built.
        datasets = resolve(config.data, config.model.vocab_size, cache, log)
    distributed.barrier("data")
    if not distributed.is_primary():
        datasets = resolve(config.data, config.model.vocab_size, cache, log)
    tokenizer = datasets[0][0].tokenizer
    for other in (run_dir, init_source and init_source.workdir):
        if other:  # A model only makes sense of the tokens it was trained on.
            check_tokenizer(other, tokenizer)
    start = time.perf_counter()
    train_fn, eval_fn = compile_steps(config, tx, mesh, target)
    log(f"compiled train and eval steps in {time.perf_counter() - start:.1f}s")

    rows = batch_sharding(mesh)
    train_data = pipeline.GlobalBatches(pipeline.mixture_rows(datasets, seq, config.seed),
                                        t.global_batch_size, seq, rows)
    print(f"data: process {jax.process_index()} of {jax.process_count()} reads rows "  # Every process.
          f"{train_data.local_rows[0]}..{train_data.local_rows[-1]} of each global batch of "
          f"{t.global_batch_size}", flush=True)
    evaluator = Evaluator(datasets, seq, t.global_batch_size, t.eval_batches, rows)
    peak, peak_source = flops.host_peak_flops(cache, config.model.dtype)
    log(f"peak: {peak / 1e12:.3f} TFLOP/s ({peak_source})")
    model_flops_per_token = flops.flops_per_token(config.model, seq)
    tokens_per_step = t.global_batch_size * seq
    nan_steps = config_lib.inject_nan_steps(config)

    if distributed.is_primary():
        write_config(run_dir, config)
        tokenizer.save(run_dir)
    checkpointer = Checkpointer(run_dir / "checkpoints", config, log)
    state, data_step = initial_state(config, tx, target, checkpointer, log)
    step = int(state.step)
    writer = MetricsWriter(run_dir, enabled=distributed.is_primary(), resume_step=step, config=config)
    guard = DivergenceGuard(t.guard_spike_factor, t.guard_patience, t.guard_max_rollbacks)
    run_start = time.perf_counter()
    pending, interval_start = [], time.perf_counter()
    train_loss, val = float("nan"), {"loss": float("nan"), "bits_per_byte": float("nan")}

    def meta():
        return metadata(step, data_step, train_loss, config, run_start) | {
            "skipped_steps": int(state.skipped_steps)}

    def set_status(phase, error=None):
        if distributed.is_primary():
            write_status(run_dir, phase, step, error)

    set_status("running")
    try:
        with PreemptionFlag() as preemption:
            while step < t.steps:
                batch = train_data.device_batch(data_step, poison=data_step in nan_steps)
                state, metrics = train_fn(state, batch)
                step, data_step = step + 1, data_step + 1
                pending.append(metrics | {"data_step": data_step - 1})
                if guard.observe(float(metrics["loss"])):
                    restored = checkpointer.restore_latest(target.params, target.opt_state)
                    if restored is None:
                        raise CheckpointError("the loss diverged and there is no checkpoint to roll "
                                              "back to; lower optimizer.learning_rate or save earlier "
                                              "(checkpoint.every_steps).")
                    guard.rolled_back()
                    log(f"step {step:>6}/{t.steps} | {guard.patience} bad steps in a row: rolled back "
                        f"to checkpoint step {restored.step} and skipped data steps "
                        f"{restored.meta['data_step']}..{data_step - 1} (rollback {guard.rollbacks} of "
                        f"at most {guard.max_rollbacks})")
                    state = state_from_checkpoint(restored, target, True)
                    step, pending, interval_start = restored.step, [], time.perf_counter()
                    continue
                if step % t.log_every == 0 or step == t.steps:
                    fetched = jax.device_get(pending)
                    values = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                    elapsed = time.perf_counter() - interval_start
                    tokens_per_sec = len(pending) * tokens_per_step / elapsed
                    values.update(tokens_per_sec=tokens_per_sec, data_step=fetched[-1]["data_step"],
                                  tflops_per_device=tokens_per_sec * model_flops_per_token / mesh.devices.size / 1e12,
                                  mfu=tokens_per_sec * model_flops_per_token / peak,
                                  skipped=sum(int(m["skipped"]) for m in fetched))
                    train_loss = values["loss"]
                    writer.write(step, "train", values)
                    set_status("running")
                    eta = (t.steps - step) * elapsed / len(pending)
                    log(f"step {step:>6}/{t.steps} | loss {values['loss']:.4f} | lr {values['learning_rate']:.2e} "
                        f"| grad_norm {values['grad_norm']:.3f} | {tokens_per_sec:,.0f} tok/s "
                        f"| MFU {100 * values['mfu']:.1f}% | ETA {_duration(eta)}"
                        + (f" | skipped {values['skipped']}" if values["skipped"] else ""))
                    pending, interval_start = [], time.perf_counter()
                if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
                    results = evaluator(eval_fn, state.params)
                    val = Evaluator.headline(results)
                    writer.write(step, "val", val)
                    for name, values in results.items() if len(results) > 1 else ():
                        writer.write(step, f"val_{name}", values)
                    log(f"step {step:>6}/{t.steps} | " + " | ".join(
                        f"val{'' if len(results) == 1 else ' ' + name} loss {v['loss']:.4f} ppl "
                        f"{v['perplexity']:.2f} bpb {v['bits_per_byte']:.4f}" for name, v in results.items()))
                    if not pending:  # Keep evaluation time out of the next throughput figure.
                        interval_start = time.perf_counter()
                if preemption.requested(step):
                    checkpointer.save(step, state, meta, force=True)
                    checkpointer.close()
                    log(f"step {step:>6}/{t.steps} | {preemption.signal_name}: checkpoint written, "
                        f"exiting with code {EXIT_PREEMPTED}; rerun the same command to resume")
                    raise Preempted()
                if guard.healthy:
                    checkpointer.save(step, state, meta, force=step == t.steps)
            checkpointer.close()
    except Preempted:
        set_status("preempted")
        raise
    except BaseException as error:
        set_status("failed", (f"{type(error).__name__}: {error}".strip().splitlines() or ["?"])[-1])
        checkpointer.abandon()
        raise
    finally:
        writer.close()
    set_status("done")
    summary = {"steps": t.steps, "final_train_loss": train_loss, "final_val_loss": val["loss"],
               "final_val_bits_per_byte": val["bits_per_byte"],
               "unigram_entropy": datasets[0][0].manifest["unigram_entropy_nats"],
               "skipped_steps": int(state.skipped_steps), "rollbacks": guard.rollbacks,
               "checkpoint_saves": checkpointer.saves,
               "checkpoint_blocked_seconds": checkpointer.blocked_seconds,
               "wall_seconds": time.perf_counter() - run_start}
    if distributed.is_primary():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"done in {_duration(summary['wall_seconds'])}: train loss {train_loss:.4f}, "
        f"val loss {val['loss']:.4f}, val bits/byte {val['bits_per_byte']:.4f} (unigram entropy of the corpus: "
        f"{summary['unigram_entropy']:.4f} nats/token); checkpoint saves blocked training for "
        f"{summary['checkpoint_blocked_seconds']:.2f}s in all")
    return summary
