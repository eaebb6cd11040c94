"""A batch's layout: one `Field` per array, declared by the objective."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

ROW_AXES = ("activation_batch", "activation_length")  # A [batch, length] array.


@dataclasses.dataclass(frozen=True)
class Field:
    """One array of a batch. `kind` says what its values are, so that synthetic batches
    (benchmarks) and fault injection can make valid ones without knowing the objective:
    tokens (ids < vocab), positions (0..L-1), segments (document ids), weights (loss weights)."""
    shape: tuple[int, ...]
    dtype: str
    axes: tuple[str | None, ...]
    kind: str


def abstract_batch(fields: dict[str, Field], sharding_of) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs carrying shardings (`sharding_of(axes)`), for compiling."""
    return {name: jax.ShapeDtypeStruct(f.shape, np.dtype(f.dtype), sharding=sharding_of(f.axes))
            for name, f in fields.items()}


def synthetic_batch(fields: dict[str, Field], vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Host arrays with the fields' shapes: uniform random tokens, one document per row."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, f in fields.items():
        if f.kind == "tokens":
            out[name] = rng.integers(0, vocab_size, f.shape, dtype=np.dtype(f.dtype))
        elif f.kind == "positions":
            out[name] = np.broadcast_to(np.arange(f.shape[-1], dtype=np.dtype(f.dtype)), f.shape)
        elif f.kind == "segments":
            out[name] = np.zeros(f.shape, np.dtype(f.dtype))
        else:
            out[name] = np.ones(f.shape, np.dtype(f.dtype))
    return out
