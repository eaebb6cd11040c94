"""Validation on fixed held-out batches of each dataset, with the objective's metrics (for
causal LM: loss, perplexity and bits per byte).

Bits per byte divide the summed loss (in bits) by the UTF-8 bytes the evaluated targets stand
for, which makes models with different tokenizers comparable; loss per token does not.
"""

from __future__ import annotations

import jax
import numpy as np

from llmjax.checkpoint import Checkpointer, check_same_model
from llmjax.config import apply_overrides
from llmjax.data import pipeline
from llmjax.data.dataset import cache_dir, check_tokenizer, given_tokenizer, is_prepared, open_dataset, resolve
from llmjax.data.tokenizer import load_from_dir
from llmjax.run import bootstrap
from llmjax.train import objectives
from llmjax.train.objectives.task import TaskObjective
from llmjax.errors import FlagError
from llmjax.rundir import RunDir


def _sum_over_processes(value: float) -> float:
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return float(np.sum(multihost_utils.process_allgather(np.float64(value))))


class Evaluator:
    """Places each dataset's validation batches on the devices once, then evaluates any params.
    As for training batches, each process builds only the rows its devices hold."""

    def __init__(self, datasets, run, batch_size: int, max_batches: int, tokenizer=None):
        config, self.objective, self.config = run.config, run.objective, run.config
        self.layout = pipeline.RowLayout({k: f.shape for k, f in run.batch_fields(batch_size).items()},
                                         run.batch_shardings(batch_size))
        self.token_ids = self.objective.token_ids(tokenizer or datasets[0][0].tokenizer, config)
        self.sets = []
        for name, host, token_bytes in self.objective.eval_sets(datasets, config, self.token_ids, batch_size,
                                                                max_batches, self.layout.local_rows):
            owned = [{r: rows[r] for r in self.layout.owned_rows} for rows in host]
            num_bytes = _sum_over_processes(sum(self.objective.target_bytes(pipeline.stack(rows), token_bytes)
                                                for rows in owned if rows))
            self.sets.append((name, [self.layout.place(rows) for rows in host], num_bytes))

    def __call__(self, eval_fn, params) -> dict[str, dict[str, float]]:
        """{dataset name: metrics}, plus "all" (the datasets pooled) when there are several."""
        results, pooled_sums, pooled_bytes = {}, None, 0.0
        for name, batches, num_bytes in self.sets:
            outputs = jax.device_get([eval_fn(params, batch) for batch in batches])
            sums = [np.sum(np.asarray(parts, np.float64), axis=0) for parts in zip(*outputs)]
            results[name] = self.objective.metrics(sums, num_bytes)
            pooled_sums = sums if pooled_sums is None else [a + b for a, b in zip(pooled_sums, sums)]
            pooled_bytes += num_bytes
        if len(self.sets) > 1:
            results["all"] = self.objective.metrics(pooled_sums, pooled_bytes)
        self.headline(results).update(self.objective.extra_metrics(params, self.config, self.token_ids))
        return results

    def per_position(self, position_fn, params) -> dict[str, dict[str, list]]:
        """{dataset name: {"loss": mean NLL at each position, "tokens": tokens scored there}}
        from a step compiled with `per_position=True`."""
        def curve(nll, tokens):
            loss = np.where(tokens > 0, nll / np.maximum(tokens, 1.0), np.nan)
            return {"loss": [round(float(x), 6) for x in loss], "tokens": [int(x) for x in tokens]}

        results, pooled = {}, 0.0
        for name, batches, _ in self.sets:
            sums = np.sum(jax.device_get([position_fn(params, batch) for batch in batches]), axis=0, dtype=np.float64)
            results[name], pooled = curve(*sums), pooled + sums
        if len(self.sets) > 1:
            results["all"] = curve(*pooled)  # The datasets pooled, as the headline metrics are.
        return results

    @staticmethod
    def headline(results: dict[str, dict[str, float]]) -> dict[str, float]:
        return results.get("all") or next(iter(results.values()))


def evaluate_run(workdir, step: int | None, data: str, max_batches: int | None, log=print,
                 per_position: bool = False, glob: str = "") -> dict:
    """Evaluates a run's checkpoint (`step`, or the latest) on the held-out split of `data`
    (comma-separated datasets; the run's own when empty): {"step": S, dataset name: metrics},
    and with `per_position` also {"per_position": {dataset name: Evaluator.per_position}}.
    Text directories in `data` are read with `glob` (default: the run's data.glob) and
    tokenized with the run's own tokenizer; a prepared dataset must have been made with it.
    Uses every device as one data-parallel mesh, whatever mesh the run trained on."""
    run_dir = RunDir(workdir)
    config = run_dir.config
    step = run_dir.resolve_step(step)
    devices = jax.device_count()
    batch_size = -(-config.train.global_batch_size // devices) * devices
    overrides = {f"mesh.ici.{axis}": 1 for axis in ("fsdp", "expert", "sequence", "tensor")} | {
        "mesh.ici.data": -1, "train.global_batch_size": batch_size}
    task = isinstance(objectives.of(config).impl(), TaskObjective)
    if data and task:
        raise FlagError(f"--data {data}: {run_dir.given} is a fine-tuning run, evaluated on its task's "
                        f"held-out examples (objective.task={config.objective.task!r}); drop --data.")
    if data:
        specs = [spec.strip() for spec in data.split(",") if spec.strip()]
        overrides |= {"data.source": specs[0].rpartition(":")[0] or specs[0], "data.mixture":
                      ",".join(s if ":" in s else f"{s}:1" for s in specs) if len(specs) > 1 else ""}
        for spec in specs:  # The real problem, before resolve() reports its vocabulary size.
            path = spec.rpartition(":")[0] if len(specs) > 1 and ":" in spec else spec
            if is_prepared(path):
                check_tokenizer(run_dir.path, open_dataset(path).tokenizer)
        tokenizer = load_from_dir(run_dir.path)
        if tokenizer is not None:
            overrides |= {"data.tokenizer": str(tokenizer.path), "data.eos_id": tokenizer.eos_id}
    if glob:
        overrides["data.glob"] = glob
    config = apply_overrides(config, overrides)
    if task:  # Its task is tokenized with the run's own tokenizer (saved with it): no corpus is read.
        datasets, tokenizer = [], load_from_dir(run_dir.path) or given_tokenizer(config.data, config.model.vocab_size)
    if not task or tokenizer is None:
        datasets = resolve(config.data, config.model.vocab_size, cache_dir(config), log,
                           objectives.of(config).special_tokens)
        tokenizer = datasets[0][0].tokenizer
    check_tokenizer(run_dir.path, tokenizer)
    run = bootstrap(config, train=False)  # Parameters only: no optimizer is built.
    check_same_model(run_dir.checkpoints, step, run.params)
    eval_fn = run.compile_eval_step()
    position_fn = run.compile_eval_step(per_position=True) if per_position else None
    evaluator = Evaluator(datasets, run, batch_size, max_batches or config.train.eval_batches, tokenizer)
    for name, batches, _ in evaluator.sets:
        if max_batches and len(batches) < max_batches:
            log(f"note: {name} has {len(batches)} validation batches of {batch_size}; evaluating all of them, "
                f"not the {max_batches} asked for")
    checkpointer = Checkpointer(run_dir.checkpoints, config, log, read_only=True)
    params = checkpointer.restore(step, run.params).params
    checkpointer.close()
    results = {"step": step, **evaluator(eval_fn, params)}
    if position_fn is not None:
        results["per_position"] = evaluator.per_position(position_fn, params)
    return results
