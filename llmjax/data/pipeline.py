"""Fixed-length training windows over a flat token stream, served by Grain as random access.

Window i is tokens[i*L : i*L + L + 1] (inputs and next-token targets). Documents were joined
with EOS, so a window may hold pieces of several; its segment ids and per-document positions
are derived from the EOS positions inside it, and the model never attends across them. The
last window is padded (weight 0), so every token of the stream is an input exactly once per
epoch. The batch for step s is windows perm[s*B : (s+1)*B] of a seeded permutation that is
redrawn each epoch: a pure function of (tokens, seed, step), so resuming needs nothing but the
step. A mixture draws global row g from dataset k by Grain's deterministic proportional
interleave, each dataset keeping its own shuffled, repeating order.
"""

from __future__ import annotations

import functools

import grain
import jax
import numpy as np


class PackedWindows:
    """A random-access source of packed windows (what `grain.MapDataset.source` wants)."""

    def __init__(self, tokens, seq_len: int, eos_id: int, pad_id: int | None = None):
        if tokens.size < 2:
            raise ValueError(f"a token stream of {tokens.size} tokens holds no (input, target) "
                             f"pair; use a larger corpus.")
        self.tokens, self.seq_len, self.eos_id = tokens, seq_len, eos_id
        self.pad_id = eos_id if pad_id is None else pad_id

    def __len__(self) -> int:
        return -(-(self.tokens.size - 1) // self.seq_len)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        start = index * self.seq_len
        window = np.asarray(self.tokens[start:start + self.seq_len + 1], np.int32)
        real = window.size - 1  # Fewer than seq_len only in the last window.
        window = np.pad(window, (0, self.seq_len + 1 - window.size), constant_values=self.pad_id)
        inputs, targets = window[:-1], window[1:]
        has_target = np.arange(self.seq_len) < real
        is_eos = (inputs == self.eos_id) & has_target
        # A token belongs to the document of the last EOS strictly before it; the tail without
        # targets (the last window's padding) is a segment of its own.
        boundary = is_eos | (np.arange(self.seq_len) == real - 1)
        segment_ids = np.concatenate([[0], np.cumsum(boundary)[:-1]]).astype(np.int32)
        starts = np.flatnonzero(np.diff(segment_ids, prepend=-1))
        positions = np.arange(self.seq_len) - np.repeat(starts, np.diff(np.append(starts, self.seq_len)))
        # After an EOS the target opens the next document, which attention cannot see.
        weights = ~is_eos & has_target
        return {
            "inputs": inputs,
            "targets": targets,
            "positions": positions.astype(np.int32),
            "segment_ids": segment_ids,
            "weights": weights.astype(np.float32),
            "index": np.int64(index),
            "length": np.int32(real),  # Tokens before the last window's padding.
        }


def train_rows(tokens, seq_len: int, eos_id: int, shuffle_seed: int, pad_id: int | None = None) -> grain.MapDataset:
    """`ds[i]` is the i-th sequence of the endless stream, reshuffled every epoch (Grain draws
    epoch e's order with `shuffle_seed` + e)."""
    source = grain.MapDataset.source(PackedWindows(tokens, seq_len, eos_id, pad_id))
    return source.shuffle(seed=shuffle_seed).repeat()


_WEYL = 0x9E3779B1  # Odd: multiplying by it permutes the 32-bit seeds.


def shuffle_seed(seed: int) -> int:
    """The Grain shuffle seed of a run's `seed`. Grain draws epoch e with seed + e, so seeds s
    and s + 1 would train on the same orders one epoch apart: a sweep over seeds would not be
    independent runs. Spread by the golden-ratio multiplier, seeds up to 16,384 apart are over
    80,000 epochs apart; seed 0 keeps Grain's own orders (and a mixture's components, whose
    seeds SeedSequence draws apart, keep theirs)."""
    return seed * _WEYL % 2**32


def mixture_rows(datasets, seq_len: int, seed: int) -> grain.MapDataset:
    """Rows of several (Dataset, weight) pairs; each row says which dataset it came from."""
    if len(datasets) == 1:
        dataset = datasets[0][0]
        return train_rows(dataset.stream("train"), seq_len, dataset.eos_id, shuffle_seed(seed), dataset.pad_id)
    parts = []
    for k, (dataset, _) in enumerate(datasets):
        component_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        rows = train_rows(dataset.stream("train"), seq_len, dataset.eos_id, component_seed, dataset.pad_id)
        parts.append(rows.map(functools.partial(_tag, source=k)))
    return grain.MapDataset.mix(parts, [weight for _, weight in datasets])


def _tag(row: dict, source: int) -> dict:
    return row | {"source": np.int32(source)}


class RowLayout:
    """Where the rows of a global batch live: `shapes` and `shardings` (field name -> global
    shape, NamedSharding) come from the objective's batch fields; every field has the batch on
    its first axis. Each process loads only `local_rows` (those its own devices hold), so on N
    hosts each reads 1/N of the data; `owned_rows` are the local rows no lower-numbered process
    holds, so that per-row sums over processes count each row once."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], shardings: dict[str, jax.sharding.NamedSharding]):
        self.shapes, self.shardings = shapes, shardings
        self.batch_size = next(iter(shapes.values()))[0]
        holder = {}  # Row -> the lowest process index holding it.
        for key, sharding in shardings.items():
            for device, index in sharding.devices_indices_map(shapes[key]).items():
                for r in range(*index[0].indices(self.batch_size)):
                    holder[r] = min(holder.get(r, device.process_index), device.process_index)
        self.local_rows = sorted({r for key, sharding in shardings.items()
                                  for index in sharding.addressable_devices_indices_map(shapes[key]).values()
                                  for r in range(*index[0].indices(self.batch_size))})
        self.owned_rows = [r for r in self.local_rows if holder[r] == jax.process_index()]

    def place(self, loaded: dict[int, dict]) -> dict:
        """Global jax.Arrays from this process's rows ({row index: row}) of one batch."""
        def part(key):
            def callback(index):
                rows = range(*index[0].indices(self.batch_size))
                return np.stack([loaded[r][key] for r in rows])[(slice(None), *index[1:])]
            return jax.make_array_from_callback(self.shapes[key], self.shardings[key], callback)

        return {key: part(key) for key in self.shapes}


class GlobalBatches:
    """The global batch of step s is rows s*B .. s*B+B-1 of the objective's rows, of which each
    process loads only its `RowLayout.local_rows`: the result does not depend on how many hosts
    there are."""

    def __init__(self, rows: grain.MapDataset, shapes: dict[str, tuple[int, ...]],
                 shardings: dict[str, jax.sharding.NamedSharding]):
        self.rows, self.layout = rows, RowLayout(shapes, shardings)
        self.batch_size, self.local_rows = self.layout.batch_size, self.layout.local_rows

    def device_batch(self, step: int, poison: bool = False) -> dict:
        """The step's batch as global jax.Arrays. `poison` makes every weight NaN (fault injection)."""
        loaded = {r: self.rows[step * self.batch_size + r] for r in self.local_rows}
        if poison:
            loaded = {r: row | {"weights": np.full_like(row["weights"], np.nan)} for r, row in loaded.items()}
        return self.layout.place(loaded)


def eval_batches(tokens, seq_len: int, eos_id: int, batch_size: int, max_batches: int,
                 pad_id: int | None = None, to_rows=None, rows: list[int] | None = None) -> list[dict]:
    """The first `max_batches` in-order batches of held-out windows, each as {row index: row}
    for the `rows` given (default: all): the same ones every time, so validation losses of
    different steps and runs compare. `to_rows` turns the MapDataset of windows into the
    objective's rows (default: the windows themselves)."""
    source = grain.MapDataset.source(PackedWindows(tokens, seq_len, eos_id, pad_id))
    if to_rows is not None:
        source = to_rows(source)
    count = min(max_batches, len(source) // batch_size)
    if count == 0:
        raise ValueError(f"the validation split has {len(source)} windows, fewer than one batch "
                         f"of train.global_batch_size={batch_size}; raise data.val_percent.")
    rows = range(batch_size) if rows is None else rows
    return [{r: source[b * batch_size + r] for r in rows} for b in range(count)]


def stack(rows: dict[int, dict]) -> dict[str, np.ndarray]:
    """{row index: row} as one host batch, rows in index order."""
    return {key: np.stack([rows[r][key] for r in sorted(rows)]) for key in rows[min(rows)]}


def to_device(batch: dict[str, np.ndarray], shardings: dict[str, jax.sharding.NamedSharding]) -> dict:
    """Places the batch fields of a host batch as global jax.Arrays; each device receives only
    its own rows."""
    return {key: jax.make_array_from_callback(batch[key].shape, sharding, lambda idx, v=batch[key]: v[idx])
            for key, sharding in shardings.items()}
