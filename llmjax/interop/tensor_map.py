"""Hugging Face interop's shared parts: the error type and `TensorMap`, one HF tensor's
correspondence with an llmjax parameter. Each family's adapter (`llmjax/model/<family>/hf.py`)
lists its tensor maps and translates its config.json; import and export stream tensors
through these maps without knowing the family.

An adapter offers: MODEL_TYPE (HF's model_type), `model_overrides(hf_config) -> config.model
fields` (refusing anything llmjax would not reproduce), `hf_config(model, dtype, special_ids)`,
`tensor_maps(model) -> [TensorMap]`, and OPTIONAL_TENSORS (HF names some checkpoints carry
that llmjax recomputes or ties, so their absence or presence is no error), and optionally
BASE_MODEL_PREFIX (the prefix its tensor names lose when a checkpoint was saved from the base
model rather than the LM-head model, e.g. GPT2Model's "h.0..." for GPT2LMHeadModel's
"transformer.h.0...").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from llmjax.errors import LlmjaxError


class InteropError(LlmjaxError, ValueError):
    """A checkpoint or config that cannot be converted; the message names what and why."""


def refuse_unsupported(hf: dict, supported: dict) -> None:
    """Refuses config.json fields set to behaviour llmjax does not implement; `supported` maps
    each such field to the one value llmjax reproduces."""
    for key, value in supported.items():
        if key in hf and hf[key] != value:
            raise InteropError(f"config.json: {key}={hf[key]!r} is not supported (llmjax has "
                               f"{key}={value!r}).")


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One HF tensor: where it lives in the llmjax params tree (`layer` indexes the stacked
    leading axis of scanned layers) and the shapes on each side."""
    hf_name: str
    path: tuple[str, ...]
    layer: int | None
    hf_shape: tuple[int, ...]
    llmjax_shape: tuple[int, ...]
    transpose: bool  # torch Linear weights are [out, in]; llmjax kernels [in..., out...].
    expert: int | None = None  # Indexes the experts axis (after the layer's) of an MoE weight.
    num_experts: int = 0

    def index(self) -> tuple[int, ...]:
        """Where the tensor sits in its (stacked) llmjax leaf."""
        return tuple(i for i in (self.layer, self.expert) if i is not None)

    def leaf_shape(self, num_layers: int) -> tuple[int, ...]:
        return (((num_layers,) if self.layer is not None else ()) + ((self.num_experts,) if self.expert is not None else ())
                + self.llmjax_shape)

    def copy_to_llmjax(self, array: np.ndarray, target: np.ndarray) -> None:
        """Writes the HF tensor into `target` (llmjax-shaped, e.g. one layer of a memory-mapped
        stacked leaf) through a reshaped view: no temporary copy of the tensor is made."""
        if self.transpose:
            target.reshape(self.hf_shape[::-1])[...] = array.T
        else:
            target.reshape(self.hf_shape)[...] = array

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        if self.transpose:
            return np.ascontiguousarray(array.reshape(self.hf_shape[::-1]).T)
        return np.ascontiguousarray(array.reshape(self.hf_shape))
