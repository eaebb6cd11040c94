"""The one error type of llmjax. Every failure a user can fix (a config value, a data file, a
workdir, a checkpoint, a Hugging Face directory) raises a subclass of `LlmjaxError` whose
message names the problem and the fix; the CLI layer has one handler that prints it as a
single line and exits with `EXIT_USER_ERROR`, so commands need no except-tuples of their own.
Anything else is a bug and keeps its traceback."""

from __future__ import annotations

EXIT_USER_ERROR = 2  # The run cannot start or continue as asked; nothing was lost.
EXIT_PREEMPTED = 75  # EX_TEMPFAIL, "try again later": checkpointed on a signal; rerun to resume.


class LlmjaxError(Exception):
    """A problem the user can fix; the message says what and how."""


class ConfigError(LlmjaxError, ValueError):
    """A config value that cannot work; the message names the key, the value and the fix."""


def config_error(key: str, value, fix: str) -> ConfigError:
    return ConfigError(f"config.{key}={value!r}: {fix}")
