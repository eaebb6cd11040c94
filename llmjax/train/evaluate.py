"""Validation on fixed held-out batches of each dataset: loss, perplexity and bits per byte.

Bits per byte divide the summed loss (in bits) by the UTF-8 bytes the evaluated targets stand
for, which makes models with different tokenizers comparable; loss per token does not.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np

from llmjax.checkpoint import Checkpointer, resolve_step
from llmjax.config import apply_overrides
from llmjax.data import pipeline
from llmjax.data.dataset import DatasetError, check_tokenizer, default_cache_dir, resolve
from llmjax.parallel.mesh import build_mesh
from llmjax.parallel.rules import batch_sharding
from llmjax.train.compile import compile_eval_step
from llmjax.train.optimizer import build_optimizer
from llmjax.train.resume import abstract_state
from llmjax.train.state import state_shardings
from llmjax.workdir import read_config


def metrics(nll: float, tokens: float, num_bytes: float) -> dict[str, float]:
    nll, tokens, num_bytes = float(nll), float(tokens), float(num_bytes)
    loss = nll / max(tokens, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "bits_per_byte": nll / math.log(2) / max(num_bytes, 1.0)}


class Evaluator:
    """Places each dataset's validation batches on the devices once, then evaluates any params."""

    def __init__(self, datasets, seq_len: int, batch_size: int, max_batches: int, sharding):
        self.sets = []
        for dataset, _ in datasets:
            stream = dataset.stream("val")
            if stream.size < 2:
                raise DatasetError(f"dataset {dataset.name} ({dataset.directory}) has no validation "
                                   f"tokens; prepare it with a larger --val_percent.")
            try:
                host = pipeline.eval_batches(stream, seq_len, dataset.eos_id, batch_size, max_batches,
                                             dataset.pad_id)
            except ValueError as error:
                raise DatasetError(f"dataset {dataset.name}: {error}") from None
            token_bytes = dataset.tokenizer.token_bytes()
            num_bytes = sum(float((token_bytes[b["targets"]] * b["weights"]).sum()) for b in host)
            self.sets.append((dataset.name, [pipeline.to_device(b, sharding) for b in host], num_bytes))

    def __call__(self, eval_fn, params) -> dict[str, dict[str, float]]:
        """{dataset name: metrics}, plus "all" (the datasets pooled) when there are several."""
        results, pooled = {}, np.zeros(3)
        for name, batches, num_bytes in self.sets:
            nll, tokens = np.sum(jax.device_get([eval_fn(params, batch) for batch in batches]), axis=0)
            results[name] = metrics(nll, tokens, num_bytes)
            pooled += (nll, tokens, num_bytes)
        if len(self.sets) > 1:
            results["all"] = metrics(*pooled)
        return results

    @staticmethod
    def headline(results: dict[str, dict[str, float]]) -> dict[str, float]:
        return results.get("all") or next(iter(results.values()))


def evaluate_run(workdir, step: int | None, data: str, max_batches: int | None, log=print) -> dict:
    """Evaluates a run's checkpoint (`step`, or the latest) on the held-out split of `data`
    (comma-separated datasets; the run's own when empty): {"step": S, dataset name: metrics}.
    Uses every device as one data-parallel mesh, whatever mesh the run trained on."""
    workdir = Path(workdir).expanduser()
    config = read_config(workdir)
    step = resolve_step(workdir, step)
    devices = jax.device_count()
    batch_size = -(-config.train.global_batch_size // devices) * devices
    overrides = {f"mesh.ici.{axis}": 1 for axis in ("fsdp", "sequence", "tensor")} | {
        "mesh.ici.data": -1, "train.global_batch_size": batch_size}
    if data:
        specs = [spec.strip() for spec in data.split(",") if spec.strip()]
        overrides |= {"data.source": specs[0].rpartition(":")[0] or specs[0], "data.mixture":
                      ",".join(s if ":" in s else f"{s}:1" for s in specs) if len(specs) > 1 else ""}
    config = apply_overrides(config, overrides)
    cache = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else default_cache_dir()
    datasets = resolve(config.data, config.model.vocab_size, cache, log)
    check_tokenizer(workdir, datasets[0][0].tokenizer)
    mesh = build_mesh(config)
    tx = build_optimizer(config)
    params_target = abstract_state(config, tx, state_shardings(config, tx, mesh)).params
    eval_fn = compile_eval_step(config, mesh, params_target)
    evaluator = Evaluator(datasets, config.data.seq_len, batch_size, max_batches or config.train.eval_batches,
                          batch_sharding(mesh))
    checkpointer = Checkpointer(workdir / "checkpoints", config, log, read_only=True)
    params = checkpointer.restore(step, params_target).params
    checkpointer.close()
    return {"step": step, **evaluator(eval_fn, params)}
