"""What every llmjax command shares: absl startup, one clear line for any bad flag, and the one
handler of `LlmjaxError`: whatever a command raises that the user can fix is printed as
`error: ...` on stderr and exits with the error's exit code."""

from __future__ import annotations

import re
import sys
import traceback

from absl import app, flags, logging

from llmjax import cpu_runtime
from llmjax.errors import LlmjaxError
from llmjax.model import registry


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
                 f"{key.group(1) if key else text}. {hint.group(1) if hint else ''}".rstrip()
                 + (family_hint(key.group(1)) if key else ""))


def family_hint(key: str) -> str:
    """For a model field that belongs to other families: which ones, and what to do."""
    owners = registry.owners(key)
    if not owners:
        return ""
    return (f" ({key} is a config.model field of the {', '.join(owners)} "
            f"famil{'ies' if len(owners) > 1 else 'y'}, not of this config's family; start from a "
            f"config of that family to use it.)")


def config_overrides(argv: list[str], config) -> dict:
    """{dotted key: typed value} of the --config.KEY=VALUE arguments in `argv`, read back from
    the config they were applied to (so their types are ml_collections' own parsing)."""
    overrides = {}
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            value = config
            for part in key.split("."):
                value = value[part]
            overrides[key] = value
    return overrides


def load_config(config_flag):
    """The parsed config; a missing or broken config file is one line, not a traceback
    (ml_collections loads it lazily, on first access)."""
    try:
        config = config_flag.value
        config.keys()
    except OSError as error:
        sys.exit(f"error: {str(error).splitlines()[0]}: {' '.join(str(error).split()[-6:])}")
    return config


def _exit(code: int) -> None:
    from llmjax.parallel import distributed  # noqa: PLC0415 - JAX is not imported for --help.

    distributed.exit_after_error(code)


def _reporting_errors(main):
    def wrapped(argv):
        try:
            return main(argv)
        except LlmjaxError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            _exit(error.exit_code)
        except Exception:  # A bug: its traceback, and no hang in a multi-process job.
            traceback.print_exc()
            _exit(1)
    return wrapped


def run(main) -> None:
    cpu_runtime.configure()  # Before JAX starts its backend.
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news to a user.
    app.run(_reporting_errors(main), flags_parser=_parse_flags)
