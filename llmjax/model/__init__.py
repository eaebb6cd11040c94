"""The Llama-architecture model as two pure functions."""

from llmjax.model.transformer import apply, apply_hidden, init

__all__ = ["apply", "apply_hidden", "init"]
