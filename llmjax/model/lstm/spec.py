"""The LSTM family's config.model fields and their checks."""

from __future__ import annotations

import dataclasses

from llmjax.errors import config_error
from llmjax.model.spec import ModelSpec, divisible, finite, positive


@dataclasses.dataclass(frozen=True, kw_only=True)
class LSTMSpec(ModelSpec):
    family: str = "lstm"
    hidden_dim: int = 512  # Cell state width of every layer (each gate is this wide).
    # Width of each layer's output h when projected (LSTMP, Sak et al. 2014; torch's proj_size);
    # 0: no projection, h is hidden_dim wide.
    proj_dim: int = 0
    forget_bias: float = 1.0  # Initial forget-gate bias: remember by default (Jozefowicz et al. 2015).
    # Time steps per iteration of the recurrence's loop (speed only). 1 is fastest on XLA:CPU
    # (lstm-5m: 1.25x over 8, which beats 32; scripts/benchmark.py lstm-5m --variant ...).
    scan_unroll: int = 1

    @property
    def out_dim(self) -> int:
        """Width of each layer's output, which the next layer and the output layer read."""
        return self.proj_dim or self.hidden_dim

    @classmethod
    def validate(cls, model, mesh_shape) -> None:
        super().validate(model, mesh_shape)
        positive(model, "hidden_dim", "scan_unroll")
        finite(model, "forget_bias")
        if not isinstance(model.proj_dim, int) or model.proj_dim < 0:
            raise config_error("model.proj_dim", model.proj_dim, "must be 0 (no projection) or a positive integer.")
        out_dim = model.proj_dim or model.hidden_dim
        if model.tie_embeddings and out_dim != model.d_model:
            raise config_error("model.tie_embeddings", True,
                               f"a tied output layer reads the top LSTM layer's output, which is "
                               f"{out_dim} wide (model.{'proj_dim' if model.proj_dim else 'hidden_dim'}), "
                               f"not model.d_model={model.d_model}; set model.proj_dim={model.d_model} "
                               f"or model.tie_embeddings=False.")
        if mesh_shape:
            for axis, why in (("tensor", "each time step would all-gather the hidden state across "
                                         "the tensor axis, which costs more than it saves at LSTM "
                                         "widths"),
                              ("sequence", "the recurrence runs the time steps one after another, "
                                           "so the sequence cannot be split across devices")):
                if mesh_shape.get(axis, 1) > 1:
                    raise config_error(f"mesh.ici.{axis}", mesh_shape[axis],
                                       f"the lstm family shards over data and fsdp only: {why}; "
                                       f"set mesh.ici.{axis}=1 and use data or fsdp.")
            divisible(model, "proj_dim" if model.proj_dim else "hidden_dim", mesh_shape, "fsdp")
