"""Hugging Face's on-disk weight layout: one `model.safetensors`, or above a size limit shards
`model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json` (the weight map that
`from_pretrained` reads). Reading goes one tensor at a time through `safe_open`, so a model
never has to fit in host memory to be converted."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from llmjax.data.jsonfile import read_json_object
from llmjax.interop.tensor_map import InteropError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def parse_size(text: str) -> int:
    """Bytes from '5GB', '200MB', '10KB' or a plain number (decimal units, like transformers);
    ValueError unless it is a positive, finite size."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    text = text.strip().upper()
    unit = next((u for u in units if text.endswith(u)), "")
    size = float(text[:len(text) - len(unit)]) * units.get(unit, 1)
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"{text}: not a positive, finite size")
    return int(size)


def plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped, in order, into shards of at most `max_shard_bytes` (a tensor larger
    than the limit gets a shard of its own)."""
    shards, current, used = [], [], 0
    for name, size in sizes:
        if current and used + size > max_shard_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return shards + [current] if current else shards


def write_safetensors(directory: Path, tensors: Iterable[tuple[str, np.ndarray]],
                      sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[str]:
    """Writes the tensors (an iterator, consumed in the order of `sizes`) into shards, holding
    one shard's tensors at a time; returns the file names written."""
    shards = plan_shards(sizes, max_shard_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    stream = iter(tensors)
    weight_map = {}
    for file_name, shard in zip(names, shards):
        arrays = dict(next(stream) for _ in shard)
        save_file(arrays, str(directory / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(arrays, file_name))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(size for _, size in sizes)}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
        names.append(INDEX_FILE)
    return names


class SafetensorsReader:
    """The tensors of an HF model directory by name, opened lazily, read one at a time."""

    def __init__(self, directory: Path):
        directory = Path(directory)
        if (directory / INDEX_FILE).exists():
            weight_map = read_json_object(directory / INDEX_FILE, InteropError, _DAMAGED,
                                          keys=("weight_map",))["weight_map"]
            self.files = {name: directory / file for name, file in weight_map.items()}
        elif (directory / SINGLE_FILE).exists():
            with _opened(directory / SINGLE_FILE) as f:
                self.files = dict.fromkeys(f.keys(), directory / SINGLE_FILE)
        else:
            raise InteropError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}; give a "
                               f"directory saved with save_pretrained(safe_serialization=True).")
        for file in set(self.files.values()):
            if not file.exists():
                raise InteropError(f"{INDEX_FILE} names {file.name}, which is missing from {directory}.")
            with _opened(file):  # A truncated or damaged shard fails here, before anything is written.
                pass

    def names(self) -> set[str]:
        return set(self.files)

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        """(shape, safetensors dtype code such as F32 or BF16), from the file header alone."""
        with _opened(self.files[name]) as f:
            info = f.get_slice(name)
            return tuple(info.get_shape()), info.get_dtype()

    def read(self, name: str) -> np.ndarray:
        with _opened(self.files[name]) as f:
            return f.get_tensor(name)


_DAMAGED = "it is damaged or incomplete: copy the model directory again (save_pretrained writes it whole)."


def _opened(file: Path):
    """`safe_open` of one file, whose failure (a truncated download, another format) is one
    error naming the file."""
    try:
        return safe_open(str(file), framework="np")
    except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError and OSErrors.
        raise InteropError(f"{file} cannot be read as safetensors ({' '.join(str(error).split())[:160]}); "
                           f"{_DAMAGED}") from None
