"""Sequence classification: a linear head on one token's final hidden state (the family's
`pooling`: a decoder's last token, which has seen the whole text; BERT's first), trained with
cross-entropy over the task's labels.

A row is one example: its tokens with end-of-document appended (decoders: the token read) or
prepended (bidirectional encoders: BERT's [CLS] position), padding in a segment of its own so
no real token attends to it. Evaluation sums a confusion matrix, which adds over batches and
devices exactly; accuracy and macro-F1 come from it through scikit-learn.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import f1_score

from llmjax import model, tasks
from llmjax.data.tokenizer import CLS_NAMES
from llmjax.model import registry
from llmjax.tasks import labels as label_set
from llmjax.train.objectives.cross_entropy import mean
from llmjax.train.objectives.fields import ROW_AXES, Field, abstract_batch
from llmjax.train.objectives.task import TaskObjective, fit, spread

BATCH_AXES = ("activation_batch",)


def labels(config) -> list[str]:
    return list(label_set.parse(config.objective.labels))


class Classify(TaskObjective):
    name = "classify"
    kinds = ("classification",)

    def fields(self, config, batch_size: int) -> dict[str, Field]:
        shape = (batch_size, config.data.seq_len)
        return {"inputs": Field(shape, "int32", ROW_AXES, "tokens"),
                "positions": Field(shape, "int32", ROW_AXES, "positions"),
                "segment_ids": Field(shape, "int32", ROW_AXES, "segments"),
                "pool": Field((batch_size,), "int32", BATCH_AXES, "positions"),
                "labels": Field((batch_size,), "int32", BATCH_AXES, "labels"),
                "weights": Field((batch_size,), "float32", BATCH_AXES, "weights")}

    def encode(self, task, tokenizer, config) -> dict:
        names = labels(config)
        index = {label: i for i, label in enumerate(names)}
        first = registry.of(config).pooling == "first"
        length, pad = config.data.seq_len, tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id

        # Around each text: a decoder ends it with end-of-document and pools there; an encoder pools
        # its first token: [CLS] text [SEP] as BERT was pretrained, where the tokenizer has [CLS],
        # else the end-of-document token that precedes each document llmjax's BERT saw.
        cls = tokenizer.token_id(CLS_NAMES) if first else None
        before, after = (([cls], [tokenizer.eos_id]) if cls is not None else
                         ([tokenizer.eos_id], []) if first else ([], [tokenizer.eos_id]))

        def row(example, body):
            body = fit(body, length - len(before) - len(after), config, example.where, "text")
            tokens = [*before, *body, *after]
            n = len(tokens)
            return {"inputs": np.asarray(tokens + [pad] * (length - n), np.int32),
                    "positions": np.arange(length, dtype=np.int32),
                    "segment_ids": (np.arange(length) >= n).astype(np.int32),
                    "pool": np.int32(0 if first else n - 1),
                    "labels": np.int32(index[example.fields["label"]]),
                    "weights": np.float32(1.0)}

        def rows(examples):
            return [row(e, body) for e, body in zip(examples, tokenizer.encode_batch([e.fields["text"] for e in examples]))]
        return {"train": rows(task.train), "val": rows(task.val)}

    def init_head(self, rng, config, model_params):
        """A linear map from the pooled hidden state to one logit per label."""
        batch = abstract_batch(self.fields(config, 1), lambda _: None)
        h_BTD = jax.eval_shape(lambda p, b: registry.of(config).math().apply(p, b, config=config, with_head=False)[0],
                               nn.unbox(model_params), batch)
        width = h_BTD.shape[-1]
        count = len(labels(config))
        kernel = jax.random.normal(rng, (width, count), jnp.float32) * 0.02
        return {"kernel": nn.LogicallyPartitioned(kernel, ("embed", None)),
                "bias": nn.LogicallyPartitioned(jnp.zeros((count,), jnp.float32), (None,))}

    def logits(self, params, batch, config):
        h_BD = pooled(params, batch, config)
        head = params["task_head"]
        return h_BD.astype(jnp.float32) @ head["kernel"] + head["bias"]

    def loss_sums(self, params, batch, *, config, z_loss: float):
        logits_BK = self.logits(params, batch, config)
        log_z_B = jax.nn.logsumexp(logits_BK, axis=-1)
        nll_B = log_z_B - jnp.take_along_axis(logits_BK, batch["labels"][:, None], axis=-1)[:, 0]
        weights = batch["weights"]
        return jnp.sum(nll_B * weights), z_loss * jnp.sum(jnp.square(log_z_B) * weights), jnp.sum(weights)

    def eval_sums(self, params, batch, *, config):
        """(NLL sum, examples, confusion matrix [true label, predicted label])."""
        nll, _, count = self.loss_sums(params, batch, config=config, z_loss=0.0)
        k = len(labels(config))
        predicted = jnp.argmax(self.logits(params, batch, config), axis=-1)
        confusion = jnp.zeros((k, k), jnp.float32).at[batch["labels"], predicted].add(batch["weights"])
        return nll, count, confusion

    def metrics(self, sums, num_bytes: float) -> dict[str, float]:
        del num_bytes
        nll, count, confusion = float(sums[0]), float(sums[1]), np.rint(np.asarray(sums[2])).astype(np.int64)
        k = confusion.shape[0]
        truth = np.repeat(np.repeat(np.arange(k), k), confusion.reshape(-1))
        predicted = np.repeat(np.tile(np.arange(k), k), confusion.reshape(-1))
        loss = mean(nll, count)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                "accuracy": mean(float(np.trace(confusion)), float(confusion.sum())),
                "macro_f1": macro_f1(truth, predicted)}

    def baseline(self, task, config) -> tuple[str, dict[str, float]]:
        """Always predicting the train split's majority label, on the held-out examples the
        run evaluates (`spread`: all of them, unless train.eval_batches covers fewer)."""
        scored = spread(config.train.eval_batches * config.train.global_batch_size, len(task.val))
        truth = [task.val[i].fields["label"] for i in scored]
        predicted = [tasks.majority_label(task.train)] * len(truth)
        return "majority class", {"accuracy": float(np.mean([t == p for t, p in zip(truth, predicted)])),
                                  "macro_f1": macro_f1(truth, predicted)}

    def describe(self, values: dict[str, float]) -> str:
        return f"loss {values['loss']:.4f} acc {values['accuracy']:.4f} macro-F1 {values['macro_f1']:.4f}"


def macro_f1(truth, predicted) -> float:
    """Mean F1 over the labels that occur among the evaluated examples or the predictions
    (scikit-learn's default): a label absent from both has no F1, and counting it as 0 would
    deflate the score of a model that is right on every example."""
    return float(f1_score(truth, predicted, average="macro", zero_division=0))


def pooled(params, batch, config):
    """The final hidden state [B, D] of each row's pooled token."""
    h_BTD, _ = model.forward(params, batch, config=config, with_head=False)
    return jnp.take_along_axis(h_BTD, batch["pool"][:, None, None], axis=1)[:, 0]


OBJECTIVE = Classify()
