"""Sweeps: expanding an experiment into runs, launching them, and reporting on them."""

from llmjax.errors import LlmjaxError


class SweepError(LlmjaxError, ValueError):
    """A sweep that cannot run as written, or a sweep directory that cannot be read; raised
    before any run starts or anything is written."""
