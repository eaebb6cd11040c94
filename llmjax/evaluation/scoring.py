"""Log-likelihoods and generations of token sequences for a loaded run, in batches of fixed
shapes: every batch has the same number of rows, and its length is one of a few buckets (powers
of two from 16 up to model.max_seq_len), so the jitted forward pass and the decoding loop
compile once per bucket however many requests an evaluation brings. Requests are sorted by
length first, so a batch holds requests of similar lengths and wastes little on padding.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from llmjax import model
from llmjax.evaluation.loading import EvaluationError, LoadedRun
from llmjax.sample.generate import Settings, bucket, generate
from llmjax.sample.select import Sampling
from llmjax.train import objectives

def _target_logprobs(params, inputs_BT, targets_BT, prefix_BT, *, config):
    """(log-probability of each target given the inputs up to it [B, T], whether it is the
    most likely token there [B, T]): all that leaves the devices, not [B, T, V] logits. A
    prefix LM reads the context (`prefix_BT`) both ways, as it was trained to."""
    prefix = {"prefix": prefix_BT} if objectives.of(config).prompt_is_prefix else {}
    logits_BTV = model.forward(params, {"inputs": inputs_BT, **prefix}, config=config)
    logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
    target_BT = jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return target_BT, jnp.argmax(logits_BTV, axis=-1) == targets_BT


class Scorer:
    """Scores continuations and generates text for one loaded run. `batch_size` is rounded up
    to a multiple of the devices the batch is split over."""

    def __init__(self, loaded: LoadedRun, batch_size: int):
        if batch_size < 1:
            raise EvaluationError(f"batch_size={batch_size}: must be at least 1.")
        self.loaded, self.config = loaded, loaded.config
        self.max_len = loaded.config.model.max_seq_len
        mesh = loaded.run.mesh
        self.shards = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
        self.batch_size = -(-batch_size // self.shards) * self.shards
        self._rows = loaded.run.sharding(("activation_batch", None))
        params = jax.tree.map(lambda x: x.sharding, loaded.params)
        self._forward = jax.jit(functools.partial(_target_logprobs, config=loaded.config),
                                in_shardings=(params, self._rows, self._rows, self._rows),
                                out_shardings=(self._rows, self._rows))
        self._generations = 0  # Each generate() call draws its own sampling key.

    def loglikelihood(self, pairs: list[tuple[list[int], list[int]]],
                      progress: Callable[[int], None] = lambda done: None) -> list[tuple[float, bool]]:
        """For each (context, continuation) of token ids: the continuation's summed log-probability
        after the context, and whether greedy decoding would produce exactly it. Context and
        continuation are joined and cut from the left to model.max_seq_len + 1 tokens (the
        last is predicted, never read), as lm-eval's Hugging Face model does."""
        sequences = []
        for context, continuation in pairs:
            if not context:
                raise EvaluationError("a log-likelihood request has an empty context; condition it on "
                                      "at least one token (lm-eval passes BOS or EOS).")
            if len(continuation) > self.max_len:
                raise EvaluationError(f"a continuation of {len(continuation)} tokens cannot be scored by a model "
                                      f"of model.max_seq_len={self.max_len}; shorten it.")
            sequences.append((list(context) + list(continuation))[-(self.max_len + 1):])
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)  # An empty continuation.
        order = sorted((i for i, (_, continuation) in enumerate(pairs) if continuation),
                       key=lambda i: -len(sequences[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = bucket(len(sequences[chunk[0]]) - 1, self.max_len)
            inputs = np.full((self.batch_size, width), self.loaded.pad_id, np.int32)
            targets, prefix = inputs.copy(), np.zeros_like(inputs)
            for row, i in enumerate(chunk):
                inputs[row, :len(sequences[i]) - 1] = sequences[i][:-1]
                targets[row, :len(sequences[i]) - 1] = sequences[i][1:]
                prefix[row, :len(sequences[i]) - len(pairs[i][1])] = 1  # The context, as cut.
            with self.loaded.run.context():
                logp, greedy = self._forward(self.loaded.params, *(jax.device_put(x, self._rows)
                                                                   for x in (inputs, targets, prefix)))
            logp, greedy = np.asarray(logp, np.float64), np.asarray(greedy)
            for row, i in enumerate(chunk):
                end = len(sequences[i]) - 1
                scored = slice(end - len(pairs[i][1]), end)
                results[i] = (float(logp[row, scored].sum()), bool(greedy[row, scored].all()))
            progress(len(chunk))
        return results

    def generate(self, prompts: list[list[int]], max_new_tokens: int, sampling: Sampling = Sampling(0.0),
                 seed: int = 0, num_beams: int = 1,
                 progress: Callable[[int], None] = lambda done: None) -> list[list[int]]:
        """The new tokens of each prompt, up to (without) its first end-of-sequence token, by
        `llmjax.sample.generate` (greedy with the default `sampling`, beam search with
        `num_beams` > 1). Prompts keep their last
        model.max_seq_len - max_new_tokens tokens; an empty one starts from lm-eval's prefix token."""
        room = self.max_len - max_new_tokens
        if max_new_tokens < 1 or room < 1:
            raise EvaluationError(f"max_gen_toks={max_new_tokens}: must be at least 1 and leave room for a "
                                  f"prompt in model.max_seq_len={self.max_len}; pass --gen_kwargs "
                                  f"max_gen_toks=N with N < {self.max_len}.")
        prompts = [list(p)[-room:] or [self.loaded.prefix_id] for p in prompts]
        settings = Settings(max_new_tokens=max_new_tokens, sampling=sampling, num_beams=num_beams)
        # generate() pads every batch to a length bucket; fillers pad it to the batch size.
        pad, ends = self.loaded.pad_id, set(self.loaded.eos_ids)
        results: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            fillers = [[pad]] * (self.batch_size - len(chunk))
            with self.loaded.run.context():
                out = generate(self.loaded.params, self.config, [prompts[i] for i in chunk] + fillers, settings,
                               eos_ids=self.loaded.eos_ids, pad_id=pad, seed=seed + self._generations)
            self._generations += 1
            for row, i in enumerate(chunk):
                new = out["tokens"][row].tolist()
                results[i] = new[:next((k for k, token in enumerate(new) if token in ends), len(new))]
            progress(len(chunk))
        return results
