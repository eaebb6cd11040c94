"""Causal language modelling: predict every next token (Radford et al. 2018; Llama, GPT-2).

A packed window (`llmjax.data.pipeline.PackedWindows`) already is a causal-LM row: inputs,
next-token targets, per-document positions and segment ids, and weights that mask padding and
the first token of each next document. So `rows` is the identity and draws no randomness.
"""

from __future__ import annotations

import functools
import math

import jax

from llmjax import model
from llmjax.data import pipeline
from llmjax.data.errors import DataError
from llmjax.train.objectives.cross_entropy import chunked_cross_entropy_sums, cross_entropy_sums, mean, token_nll
from llmjax.train.objectives.fields import ROW_AXES, Field


class CausalLM:
    name = "causal_lm"

    def fields(self, config, batch_size: int) -> dict[str, Field]:
        shape = (batch_size, config.data.seq_len)
        return {"inputs": Field(shape, "int32", ROW_AXES, "tokens"),
                "targets": Field(shape, "int32", ROW_AXES, "tokens"),
                "positions": Field(shape, "int32", ROW_AXES, "positions"),
                "segment_ids": Field(shape, "int32", ROW_AXES, "segments"),
                "weights": Field(shape, "float32", ROW_AXES, "weights")}

    def window_len(self, config) -> int:
        """Tokens of the packed windows rows are made from."""
        return config.data.seq_len

    def token_ids(self, tokenizer, config=None) -> dict:
        """No special tokens beyond end-of-document, which every tokenizer here has."""
        del tokenizer, config
        return {}

    def rows(self, windows, config, seed: int, token_ids: dict):
        """Rows of the objective from a grain.MapDataset of packed windows."""
        del config, seed, token_ids  # A window is a causal-LM row as it is.
        return windows

    def resolve(self, config, log):
        """The config with anything left to the data filled in (a fine-tuning task's labels):
        nothing here."""
        del log
        return config

    def train_rows(self, datasets, config, token_ids: dict):
        """Row g of the endless training stream (a grain.MapDataset): the objective's rows of
        the (mixed) packed windows of `datasets`."""
        windows = pipeline.mixture_rows(datasets, self.window_len(config), config.seed)
        return self.rows(windows, config, config.seed, token_ids)

    def eval_sets(self, datasets, config, token_ids: dict, batch_size: int, max_batches: int, rows: list[int]):
        """[(name, batches of {row index: row} for `rows`, token bytes)]: the fixed held-out
        batches of each dataset."""
        to_rows = functools.partial(self.rows, config=config, seed=config.seed, token_ids=token_ids)
        sets = []
        for dataset, _ in datasets:
            stream = dataset.stream("val")
            if stream.size < 2:
                raise DataError(f"dataset {dataset.name} ({dataset.directory}) has no validation "
                                f"tokens; prepare it again with a --val_percent above 0 (llmjax-prepare "
                                f"refuses a corpus it would leave without any, naming the value that works).")
            try:
                host = pipeline.eval_batches(stream, self.window_len(config), dataset.eos_id, batch_size,
                                             max_batches, dataset.pad_id, to_rows, rows)
            except ValueError as error:
                raise DataError(f"dataset {dataset.name}: {error}") from None
            sets.append((dataset.name, host, dataset.tokenizer.token_bytes()))
        return sets

    def extra_metrics(self, params, config, token_ids: dict) -> dict[str, float]:
        """Metrics that are not sums over batches (a fine-tuning task's generation scores)."""
        del params, config, token_ids
        return {}

    def loss_sums(self, params, batch, *, config, z_loss: float):
        """(NLL sum, z-loss sum, weight sum); with train.loss_chunk_len, without ever holding
        the whole batch's logits."""
        if config.train.loss_chunk_len:
            h_BTD, logits_fn = model.forward(params, batch, config=config, with_head=False)
            return chunked_cross_entropy_sums(h_BTD, logits_fn, batch["targets"], batch["weights"],
                                              z_loss, config.train.loss_chunk_len)
        logits = model.forward(params, batch, config=config)
        return cross_entropy_sums(logits, batch["targets"], batch["weights"], z_loss)

    def eval_sums(self, params, batch, *, config):
        """(sum of NLL, number of scored tokens); sums, so batches add exactly."""
        nll, _, count = self.loss_sums(params, batch, config=config, z_loss=0.0)
        return nll, count

    def position_sums(self, params, batch, *, config):
        """(NLL sum [L], scored tokens [L]) by the number of tokens of its own document the
        model has seen when predicting a target (its position), L = data.seq_len: the loss
        against context length (Kaplan et al. 2020, figure 7). Per document rather than per
        column of the packed row, since neither attention nor a recurrent state sees past a
        document's start."""
        logits = model.forward(params, batch, config=config)
        nll_BT, _ = token_nll(logits, batch["targets"])
        length = config.data.seq_len
        positions = jax.numpy.clip(batch["positions"], 0, length - 1).reshape(-1)
        weights = batch["weights"].reshape(-1)
        return (jax.ops.segment_sum((nll_BT.reshape(-1) * weights), positions, length),
                jax.ops.segment_sum(weights, positions, length))

    def target_bytes(self, host_batch, token_bytes) -> float:
        """UTF-8 bytes the scored targets stand for (for bits per byte)."""
        return float((token_bytes[host_batch["targets"]] * host_batch["weights"]).sum())

    def metrics(self, sums, num_bytes: float) -> dict[str, float]:
        """Loss, perplexity and bits per byte (the loss in bits over the UTF-8 bytes the
        targets stand for, which makes models with different tokenizers comparable)."""
        nll, tokens, num_bytes = float(sums[0]), float(sums[1]), float(num_bytes)
        loss = mean(nll, tokens)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                "bits_per_byte": mean(nll / math.log(2), num_bytes if tokens > 0 else 0.0)}

    def describe(self, values: dict[str, float]) -> str:
        """The metrics as the progress line shows them."""
        return f"loss {values['loss']:.4f} ppl {values['perplexity']:.2f} bpb {values['bits_per_byte']:.4f}"


OBJECTIVE = CausalLM()
