"""The one error type of llmjax's data layer, so that commands report any data problem as a
single line naming the file and the fix, instead of a traceback."""

from llmjax.errors import LlmjaxError


class DataError(LlmjaxError, ValueError):
    """Data cannot be read, prepared or used as asked; the message says what to change."""
