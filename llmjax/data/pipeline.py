"""Fixed-length training windows over a flat token stream, served by Grain as random access.

Window i is tokens[i*L : i*L + L + 1] (inputs and next-token targets). Documents were joined
with EOS, so a window may hold pieces of several; its segment ids and per-document positions
are derived from the EOS positions inside it, and the model never attends across them. The
batch for step s is windows perm[s*B : (s+1)*B] of a seeded permutation that is redrawn each
epoch: a pure function of (tokens, seed, step), so resuming needs nothing but the step.
"""

from __future__ import annotations

import grain
import jax
import numpy as np


class PackedWindows:
    """A random-access source of packed windows (what `grain.MapDataset.source` wants)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, eos_id: int):
        if tokens.size < seq_len + 1:
            raise ValueError(f"a token stream of {tokens.size} tokens is shorter than one "
                             f"sequence of data.seq_len={seq_len} (+1 target); lower "
                             f"data.seq_len or use a larger corpus.")
        self.tokens, self.seq_len, self.eos_id = tokens, seq_len, eos_id

    def __len__(self) -> int:
        return (self.tokens.size - 1) // self.seq_len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        start = index * self.seq_len
        window = np.asarray(self.tokens[start:start + self.seq_len + 1], np.int32)
        inputs, targets = window[:-1], window[1:]
        is_eos = inputs == self.eos_id
        # A token belongs to the document of the last EOS strictly before it.
        segment_ids = np.concatenate([[0], np.cumsum(is_eos)[:-1]]).astype(np.int32)
        starts = np.flatnonzero(np.diff(segment_ids, prepend=-1))
        positions = np.arange(self.seq_len) - np.repeat(starts, np.diff(np.append(starts, self.seq_len)))
        return {
            "inputs": inputs,
            "targets": targets,
            "positions": positions.astype(np.int32),
            "segment_ids": segment_ids,
            # After an EOS the target opens the next document, which attention cannot see.
            "weights": (~is_eos).astype(np.float32),
            "index": np.int64(index),
        }


def _stack(rows):
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def train_batches(tokens, seq_len: int, eos_id: int, batch_size: int, seed: int) -> grain.MapDataset:
    """`ds[step]` is the global batch of that step; epochs follow each other without a seam."""
    source = grain.MapDataset.source(PackedWindows(tokens, seq_len, eos_id))
    return source.shuffle(seed=seed).repeat().batch(batch_size, drop_remainder=True, batch_fn=_stack)


def eval_batches(tokens, seq_len: int, eos_id: int, batch_size: int, max_batches: int) -> list[dict]:
    """The first `max_batches` in-order batches of held-out windows: the same ones every time, so
    validation losses of different steps and runs compare."""
    source = grain.MapDataset.source(PackedWindows(tokens, seq_len, eos_id))
    batches = source.batch(batch_size, drop_remainder=True, batch_fn=_stack)
    count = min(max_batches, len(batches))
    if count == 0:
        raise ValueError(f"the validation split has {len(source)} windows, fewer than one batch "
                         f"of train.global_batch_size={batch_size}; raise data.val_percent.")
    return [batches[i] for i in range(count)]


def to_device(batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict:
    """Places a host batch as global jax.Arrays; each device receives only its own rows."""
    return {key: jax.make_array_from_callback(value.shape, sharding, lambda idx, v=value: v[idx])
            for key, value in batch.items() if key != "index"}
