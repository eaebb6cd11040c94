"""The Llama-architecture model as two pure functions."""

from llmjax.model.transformer import apply, init

__all__ = ["apply", "init"]
