"""Validation on fixed held-out batches of each dataset: loss, perplexity and bits per byte.

Bits per byte divide the summed loss (in bits) by the UTF-8 bytes the evaluated targets stand
for, which makes models with different tokenizers comparable; loss per token does not.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from llmjax.data import pipeline
from llmjax.data.dataset import DatasetError


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
            host = pipeline.eval_batches(stream, seq_len, dataset.eos_id, batch_size, max_batches,
                                         dataset.pad_id)
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
