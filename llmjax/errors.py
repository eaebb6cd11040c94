"""The one error type of llmjax. Every failure a user can fix (a config value, a data file, a
workdir, a checkpoint, a Hugging Face directory) raises a subclass of `LlmjaxError` whose
message names the problem and the fix; the CLI layer has one handler that prints it as a
single line and exits with its `exit_code`, so commands need no except-tuples of their own.
Anything else is a bug and keeps its traceback."""

from __future__ import annotations

EXIT_FLAG_ERROR = 1  # A command-line flag is wrong or missing (absl's own flag errors exit so too).
EXIT_USER_ERROR = 2  # The run cannot start or continue as asked; nothing was lost.
EXIT_PREEMPTED = 75  # EX_TEMPFAIL, "try again later": checkpointed on a signal; rerun to resume.


class LlmjaxError(Exception):
    """A problem the user can fix; the message says what and how."""
    exit_code = EXIT_USER_ERROR


class FlagError(LlmjaxError):
    """A command's flags that cannot work together (a config, data or run problem is not one)."""
    exit_code = EXIT_FLAG_ERROR


class ConfigError(LlmjaxError, ValueError):
    """A config value that cannot work; the message names the key, the value and the fix."""


def config_error(key: str, value, fix: str) -> ConfigError:
    return ConfigError(f"config.{key}={value!r}: {fix}")
