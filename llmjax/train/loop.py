"""The effectful shell around the pure step: data in, compiled steps, then the hooks
(`llmjax.train.hooks`) for everything a step's result is used for.

Order matters for failing fast: the config and workdir are checked first, then the workdir is
locked against a second training (`llmjax.workdir_lock`), `init_from` is checked, the corpus is
prepared and the steps are compiled against abstract shapes; only then is the first file
written to the workdir and any state allocated.
"""

from __future__ import annotations

import contextlib
import functools
import time

import jax

from llmjax import config as config_lib
from llmjax import flops, workdir_lock
from llmjax.checkpoint import Checkpointer, check_same_model, check_same_optimizer
from llmjax.data.dataset import cache_dir, check_tokenizer, given_tokenizer, resolve
from llmjax.finetune import EXTRA_KEYS
from llmjax.finetune.params import model_part
from llmjax.metrics import MetricsWriter
from llmjax.model.layers import attention
from llmjax.parallel import distributed
from llmjax.parallel.describe import sharding_table
from llmjax.run import bootstrap
from llmjax.train import objectives
from llmjax.train import hooks
from llmjax.train.evaluate import Evaluator
from llmjax.train.objectives.task import TaskObjective
from llmjax.train.guard import DivergenceGuard
from llmjax.train.preemption import PreemptionFlag
from llmjax.train.resume import initial_state, parse_init_from
from llmjax.rundir import RunDir, shown_changes


def _data(config, workdir, init_source, log):
    """(datasets, tokenizer). A fine-tuning run reads its task, not a corpus: it takes
    `data.tokenizer` or its model's (the run it starts from, or its own on resume), and the
    corpus is prepared only to train a tokenizer when it has none (a task run from scratch)."""
    if isinstance(objectives.of(config).impl(), TaskObjective):
        tokenizer = given_tokenizer(config.data, config.model.vocab_size, init_source and init_source.workdir, workdir)
        if tokenizer is not None:
            log(f"data: the task is tokenized with {tokenizer.path} ({tokenizer.fingerprint}, "
                f"{tokenizer.vocab_size} tokens)")
            return [], tokenizer
    datasets = _datasets(config, log)
    return datasets, datasets[0][0].tokenizer


def _datasets(config, log):
    """Process 0 prepares the data (into the cache); the others then read what it built."""
    load = functools.partial(resolve, config.data, config.model.vocab_size, cache_dir(config), log,
                             objectives.of(config).special_tokens)
    if distributed.is_primary():
        datasets = load()
    distributed.barrier("data")
    if not distributed.is_primary():
        datasets = load()
    return datasets


def train(config, workdir: str, log=functools.partial(print, flush=True),
          print_sharding: bool = False) -> dict | None:
    """Trains as `config` says, resuming from the workdir's checkpoints if it has any; returns
    the final figures (also written to summary.json). With `print_sharding`, prints where each
    parameter lives on the mesh and returns without training. SIGTERM/SIGINT are caught from
    the start: one that arrives while the data is prepared or the steps compile (minutes, for a
    large model: when schedulers preempt) stops the run after its first step, checkpointed."""
    with PreemptionFlag() as preemption, contextlib.ExitStack() as lock:
        return _train(config, workdir, log, print_sharding, preemption, lock)


def _train(config, workdir: str, log, print_sharding: bool, preemption: PreemptionFlag,
           lock: contextlib.ExitStack) -> dict | None:
    """`train`; the primary process enters the workdir's lock into `lock` (held until `train`
    returns) once the config and workdir are checked, before anything is read that a training
    already running there may be writing, or written."""
    config_lib.validate(config, jax.device_count(), jax.process_count())
    if not distributed.is_primary():
        log = lambda *_, **__: None  # noqa: E731 - one process speaks for the job.
    config = objectives.of(config).impl().resolve(config, log)
    run_dir = RunDir(workdir)
    changes = run_dir.check(config)
    if distributed.is_primary() and not print_sharding:  # Which writes nothing.
        lock.enter_context(workdir_lock.held(run_dir))
    init_source = parse_init_from(config.checkpoint.init_from)
    t, seq = config.train, config.data.seq_len
    log(f"config:\n{config}")
    if changes:
        log(f"config changes since this workdir's last start: {shown_changes(changes, limit=None)}")
    non_embedding, active = flops.non_embedding_params(config.model), flops.active_non_embedding_params(config.model)
    log(f"parameters: {flops.param_count(config.model):,} ({non_embedding:,} non-embedding"
        + (f"; {active:,} of them active per token" if active != non_embedding else "") + ")")

    run = bootstrap(config)
    log(f"mesh: {dict(run.mesh.shape)} over {run.mesh.devices.size} {jax.devices()[0].platform} devices")
    if print_sharding:  # Look, then stop: nothing is compiled or written.
        log(sharding_table(run.param_axes, run.params))
        return None
    check_same_model(run_dir.checkpoints, None, run.params)
    optimizer_changes = {k: v for k, v in changes.items() if k.startswith(("optimizer.", "finetune."))}
    check_same_optimizer(run_dir.checkpoints, None, run.state.opt_state,
                         "Resume with the settings that wrote it"
                         + (f" ({shown_changes(optimizer_changes)} changed)" if optimizer_changes else "")
                         + f", or continue from its parameters with a fresh optimizer in a new workdir: "
                           f"--workdir NEW --config.checkpoint.init_from={workdir}.")
    if init_source:  # A fine-tuning run takes the model's parameters; its own extras start afresh ...
        full = config.checkpoint.init_mode == "full"  # ... unless it continues the source's whole state.
        check_same_model(RunDir(init_source.workdir).checkpoints, init_source.step,
                         run.params if full else model_part(run.params), ignored=() if full else EXTRA_KEYS,
                         fix="checkpoint.init_from must name a run of this model (pretrained or fine-tuned)"
                             + (", and init_mode=full one with this run's task head and LoRA adapters too; "
                                "init_mode=params starts those, and the optimizer, afresh." if full else "."))
        if full:
            check_same_optimizer(RunDir(init_source.workdir).checkpoints, init_source.step, run.state.opt_state,
                                 "checkpoint.init_mode=full continues the source's optimizer: give this run its "
                                 "optimizer settings, or use init_mode=params, which starts the optimizer afresh.")
    datasets, tokenizer = _data(config, workdir, init_source, log)
    run.objective.token_ids(tokenizer, config)  # An objective's special tokens are checked before compiling.
    for other in (run_dir.path, init_source and init_source.workdir):
        if other:  # A model only makes sense of the tokens it was trained on.
            check_tokenizer(other, tokenizer)
    evaluator = Evaluator(datasets, run, t.global_batch_size, t.eval_batches, tokenizer)  # No held-out data fails here.
    start = time.perf_counter()
    with attention.recorded_kernels() as kernels:
        train_fn, eval_fn = run.compile_steps()
    log(f"compiled train and eval steps in {time.perf_counter() - start:.1f}s")
    if kernels:  # The LSTM has none.
        log(f"attention on {jax.default_backend()}: {', '.join(sorted(kernels))} (model.attention_impl="
            f"{config.model.attention_impl})")

    train_data = run.train_batches(datasets, tokenizer)
    print(f"data: process {jax.process_index()} of {jax.process_count()} reads rows "  # Every process.
          f"{train_data.local_rows[0]}..{train_data.local_rows[-1]} of each global batch of "
          f"{t.global_batch_size}", flush=True)
    peak, peak_source = flops.host_peak_flops(cache_dir(config), config.model.dtype)
    log(f"peak: {peak / 1e12:.3f} TFLOP/s ({peak_source})")
    nan_steps = config_lib.inject_nan_steps(config)

    if distributed.is_primary():
        run_dir.write_config(config)
        tokenizer.save(run_dir.path)
    checkpointer = Checkpointer(run_dir.checkpoints, config, log)
    state, data_step, resumed = initial_state(config, run.tx, run.state, checkpointer, log)
    guard = DivergenceGuard(t.guard_spike_factor, t.guard_patience, t.guard_max_rollbacks)
    guard.load(resumed.get("guard"))
    meter = hooks.Throughput(resumed.get("log_window", []))
    progress = hooks.Progress(config=config, state=state, step=int(state.step), data_step=data_step,
                              started=time.perf_counter(), guard=guard, meter=meter,
                              train_loss=resumed.get("loss", float("nan")))
    writer = MetricsWriter(run_dir.path, enabled=distributed.is_primary(), resume_step=progress.step,
                           config=config)

    def set_status(phase, step, error=None):
        if distributed.is_primary():
            run_dir.write_status(phase, step, error)

    set_status("running", progress.step)
    run_start_step = progress.step
    try:
        effects = [
            hooks.GuardHook(guard, checkpointer, run.state, log),
            hooks.LogHook(writer, meter, t.global_batch_size * seq,
                          flops.flops_per_token(config), run.mesh.devices.size, peak, log),
            hooks.StatusHook(set_status),
            hooks.EvalHook(evaluator, eval_fn, writer, meter, log),
            hooks.PreemptionHook(preemption, checkpointer, log),
            hooks.CheckpointHook(checkpointer, guard),
        ]
        _run_steps(progress, train_fn, train_data, nan_steps, effects)
        checkpointer.close()
    except hooks.Preempted:
        set_status("preempted", progress.step)
        raise
    except BaseException as error:
        set_status("failed", progress.step,
                   (f"{type(error).__name__}: {error}".strip().splitlines() or ["?"])[-1])
        checkpointer.abandon()
        raise
    finally:
        writer.close()
    if progress.step == run_start_step:  # Resumed at the last step: the summary's figures still.
        progress.val = Evaluator.headline(evaluator(eval_fn, progress.state.params))
    # A task's run is measured on its task (accuracy, macro-F1, BLEU ...), not in bits per byte
    # of a corpus: its summary holds what its evaluation reports.
    task = isinstance(run.objective, TaskObjective)
    summary = {"steps": t.steps, "final_train_loss": progress.train_loss,
               "final_val_loss": progress.val["loss"], "final_val": dict(progress.val)}
    if not task:
        summary |= {"final_val_bits_per_byte": progress.val.get("bits_per_byte", float("nan")),
                    "unigram_entropy": datasets[0][0].manifest["unigram_entropy_nats"]}
    summary |= {"skipped_steps": int(progress.state.skipped_steps), "rollbacks": guard.rollbacks,
               "checkpoint_saves": checkpointer.saves,
               "checkpoint_blocked_seconds": checkpointer.blocked_seconds,
               "wall_seconds": time.perf_counter() - progress.started}
    if distributed.is_primary():
        run_dir.write_summary(summary)
    set_status("done", progress.step)  # After the summary: a run marked done always has one.
    measured = (f"val {run.objective.describe(progress.val)}" if task else
                f"val loss {progress.val['loss']:.4f}" + (f", val bits/byte {progress.val['bits_per_byte']:.4f}"
                                                           if "bits_per_byte" in progress.val else "")
                + f" (unigram entropy of the corpus: {summary['unigram_entropy']:.4f} nats/token)")
    log(f"done in {hooks.duration(summary['wall_seconds'])}: train loss {progress.train_loss:.4f}, {measured}; "
        f"checkpoint saves blocked training for {summary['checkpoint_blocked_seconds']:.2f}s in all")
    return summary


def _run_steps(p: hooks.Progress, train_fn, train_data, nan_steps, effects) -> None:
    """The loop itself: one step, then every hook, until the last step."""
    while p.step < p.config.train.steps:
        batch = train_data.device_batch(p.data_step, poison=p.data_step in nan_steps)
        p.state, p.metrics = train_fn(p.state, batch)
        p.step, p.data_step = p.step + 1, p.data_step + 1
        for hook in effects:
            if hook.after_step(p) is hooks.ROLLED_BACK:
                for other in effects:
                    other.after_rollback(p)
                break
