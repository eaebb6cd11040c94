"""Prefix language modelling (Raffel et al. 2020, section 3.2.1; Liu et al. 2018): each document
of a packed window is split at a random point; the tokens before it are a prefix every token of
the document attends to in both directions, and the model is trained to continue it (the loss
is on the tokens after the split only). A decoder trained so reads its prompt bidirectionally.

The split of document d in global row g is drawn uniformly from the document's positions
1..len-1 in that window by a generator seeded by (seed, g): the batch of a step is a function
of (data, seed, step) and resume is exact on any mesh.
"""

from __future__ import annotations

import functools

import numpy as np

from llmjax.train.objectives.causal_lm import CausalLM
from llmjax.train.objectives.fields import ROW_AXES, Field

_STREAM = 0x706C6D  # Separates this objective's random stream from any other drawn from the seed.


class PrefixLM(CausalLM):
    """Causal LM's loss, evaluation and bits per byte over the targets after each prefix."""
    name = "prefix_lm"

    def fields(self, config, batch_size: int) -> dict[str, Field]:
        return super().fields(config, batch_size) | {
            "prefix": Field((batch_size, config.data.seq_len), "int32", ROW_AXES, "segments")}

    def rows(self, windows, config, seed: int, token_ids: dict):
        del config, token_ids
        return windows.map_with_index(functools.partial(split_documents, seed=seed))


def split_documents(index: int, window: dict, *, seed: int) -> dict:
    """The prefix-LM row of one packed window (its global row index `index`): "prefix" marks
    each document's prefix, and only the targets after it keep their weight."""
    rng = np.random.default_rng([seed, _STREAM, int(index)])
    segments = window["segment_ids"]
    starts = np.flatnonzero(np.diff(segments, prepend=-1))
    lengths = np.diff(np.append(starts, segments.size))
    # A document of n tokens here gets a prefix of 1..n-1 of them (none when n == 1).
    prefix_lengths = np.where(lengths > 1, (rng.random(lengths.size) * (lengths - 1)).astype(np.int64) + 1, 0)
    offset = np.arange(segments.size) - np.repeat(starts, lengths)  # Position within this window's piece.
    in_prefix = offset < np.repeat(prefix_lengths, lengths)
    # Position i predicts token i + 1: the last prefix token's target is the first one scored.
    scored = offset >= np.repeat(prefix_lengths, lengths) - 1
    return window | {"prefix": in_prefix.astype(np.int32),
                     "weights": (window["weights"] * scored).astype(np.float32)}


OBJECTIVE = PrefixLM()
