"""What every llmjax command shares: absl startup, one clear line for any bad flag, and the one
handler of `LlmjaxError`: whatever a command raises that the user can fix is printed as
`error: ...` on stderr and exits with `EXIT_USER_ERROR`."""

from __future__ import annotations

import re
import sys

from absl import app, flags, logging

from llmjax import cpu_runtime
from llmjax.errors import EXIT_USER_ERROR, LlmjaxError


def _parse_flags(argv):
    """absl's parser, except that a misspelt `--config.a.b=...` override (which ml_collections
    reports as a bare AttributeError/KeyError traceback) becomes one line naming the key."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"error: {error}\nPass --helpfull to see all flags.")
    except (AttributeError, KeyError) as error:
        text = str(error).encode().decode("unicode_escape")
        key = re.search(r"'(\w+)'", text)
        hint = re.search(r"(Did you mean .*\?)", text)
        sys.exit(f"error: a --config override names a key the config does not have: "
                 f"{key.group(1) if key else text}. {hint.group(1) if hint else ''}".rstrip())


def load_config(config_flag):
    """The parsed config; a missing or broken config file is one line, not a traceback
    (ml_collections loads it lazily, on first access)."""
    try:
        config = config_flag.value
        config.keys()
    except OSError as error:
        sys.exit(f"error: {str(error).splitlines()[0]}: {' '.join(str(error).split()[-6:])}")
    return config


def _reporting_errors(main):
    def wrapped(argv):
        try:
            return main(argv)
        except LlmjaxError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
    return wrapped


def run(main) -> None:
    cpu_runtime.configure()  # Before JAX starts its backend.
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news to a user.
    app.run(_reporting_errors(main), flags_parser=_parse_flags)
