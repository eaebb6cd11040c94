"""What every llmjax command shares: absl startup, one clear line for any bad flag, and the one
handler of `LlmjaxError`: whatever a command raises that the user can fix is printed as
`error: ...` on stderr and exits with the error's exit code."""

from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path

import ml_collections
from ml_collections import config_flags

from absl import app, flags, logging

from llmjax import child_processes, cpu_runtime
from llmjax.errors import EXIT_FLAG_ERROR, FlagError, LlmjaxError
from llmjax.model import registry


def _parse_flags(argv):
    """absl's parser, except that every way a command line fails is one line with its fix: a
    flag error, a `--config.a.b=...` override of the wrong type or misspelt (which
    ml_collections reports as a bare AttributeError/KeyError traceback), or a --config file
    that raises (a traceback inside ml_collections' message, or none at all)."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001 - sorted below; anything else is a bug and re-raised.
        line = _config_file_error(error, argv) or _flag_error(error)
        if line is None:
            raise
        sys.exit(line)


def _flag_error(error: Exception) -> str | None:
    if isinstance(error, flags.IllegalFlagValueError):
        override = re.match(r"flag --(config\.[\w.]+)=", str(error))
        if override and override.group(1) in flags.FLAGS:  # A config value of the wrong type.
            name, parser = override.group(1), flags.FLAGS[override.group(1)].parser
            return f"error: {error}; " + (f"{name} is a section: set its keys, --{name}.KEY=VALUE."
                                          if "ConfigDict" in type(parser).__name__ else
                                          f"give --{name} a value of its type ({parser.flag_type()}), "
                                          f"as in llmjax/config.py.")
    if isinstance(error, flags.Error):
        return f"error: {error}; pass --helpfull to see all flags."
    if isinstance(error, (AttributeError, KeyError)):
        text = str(error).encode().decode("unicode_escape")
        key = re.search(r"'(\w+)'", text)
        hint = re.search(r"(Did you mean .*\?)", text)
        return (f"error: a --config override names a key the config does not have: "
                f"{key.group(1) if key else text}. "
                f"{hint.group(1) if hint else 'See llmjax/config.py for the keys there are.'}"
                + (family_hint(key.group(1)) if key else ""))
    return None


def config_argument(argv) -> str:
    """The --config file as given, `--config=FILE` or `--config FILE` (the README's form)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def _config_file_error(error: BaseException | None, argv) -> str | None:
    """For an exception the --config file raised while loading (or one it caused: absl and
    ml_collections wrap it in others), one line with its message and the file's line."""
    given = config_argument(argv)
    path = os.path.abspath(given.split(":", 1)[0]) if given else None
    if path and isinstance(error, AttributeError) and "'get_config'" in str(error):
        return f"error: --config={given} defines no get_config(); define one that returns the config (see configs/)."
    while path and error is not None:
        if isinstance(error, SyntaxError) and error.filename:
            line = error.lineno if os.path.abspath(error.filename) == path else None
        else:
            line = next((lineno for frame, lineno in reversed(list(traceback.walk_tb(error.__traceback__)))
                         if os.path.abspath(frame.f_code.co_filename) == path), None)
        if line is not None:
            text = str(error) if isinstance(error, LlmjaxError) else f"{type(error).__name__}: {error}"
            text = " ".join(text.split()).rstrip(".")
            return (f"error: --config={given}, line {line}: {text[:300]}{'...' * (len(text) > 300)}; fix "
                    f"the config file there.")
        error = error.__context__
    return None


def family_hint(key: str) -> str:
    """For a model field that belongs to other families: which ones, and what to do."""
    owners = registry.owners(key)
    if not owners:
        return ""
    return (f" ({key} is a config.model field of the {', '.join(owners)} "
            f"famil{'ies' if len(owners) > 1 else 'y'}, not of this config's family; start from a "
            f"config of that family to use it.)")


def config_arguments(argv: list[str], flag_values=flags.FLAGS) -> list[tuple[str, list[str]]]:
    """(flag name, its arguments as given) of every --config flag in `argv`, found as absl's
    parser finds flags: `--config FILE` and `--config=FILE` (named "config"), and the overrides
    (named "config.KEY"): `--config.KEY=V`, `--config.KEY V`, and for a boolean KEY `--config.KEY`
    and `--noconfig.KEY`, each also with one dash, also from a --flagfile. What llmjax-launch
    passes on to its processes and llmjax-sweep applies to its runs: matching a `--config.`
    prefix alone dropped `--noconfig.KEY`, which the command itself had applied."""
    found, args = [], iter(flag_values.read_flags_from_files(argv, force_gnu=False))
    for arg in args:
        if arg == "--":  # The end of the flags.
            break
        if not arg.startswith("-"):
            continue  # A positional argument: absl's GNU mode reads on past it.
        name = arg[2 if arg.startswith("--") else 1:].split("=", 1)[0]
        if name not in flag_values and name.startswith("no") and name[2:] in flag_values:
            name = name[2:]  # --noKEY, which absl accepts for a boolean KEY only.
        if name not in flag_values:
            continue
        tokens = [arg]
        if not flag_values[name].boolean and "=" not in arg:
            tokens.append(next(args, ""))  # `--flag VALUE`: the value is the next argument.
        if name == "config" or name.startswith("config."):
            found.append((name, tokens))
    return found


def config_overrides(argv: list[str], config, flag_values=flags.FLAGS) -> dict:
    """{dotted key: typed value} of the --config.KEY overrides in `argv` (`config_arguments`),
    read back from the config they were applied to (so their types are ml_collections' own
    parsing)."""
    overrides = {}
    for name, _ in config_arguments(argv, flag_values):
        if name != "config":
            key = name[len("config."):]
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
        if isinstance(config, ml_collections.ConfigDict):
            config.keys()
    except OSError as error:
        sys.exit(f"error: {str(error).splitlines()[0]}: {' '.join(str(error).split()[-6:])}; give "
                 f"--config the path of a config file (see configs/).")
    if not isinstance(config, ml_collections.ConfigDict):
        sys.exit(f"error: --config={config_flags.get_config_filename(flags.FLAGS[config_flag.name])}: get_config() returned "
                 f"a {type(config).__name__}, not a ConfigDict; build it with llmjax.presets.compose or "
                 f"llmjax.config.default_config (see configs/).")
    return config


def output_file(flag: str, value: str) -> Path:
    """The file a command will write at its end, checked now: a results file that cannot be
    written must not cost a whole evaluation first."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise FlagError(f"--{flag} {value} is a directory; give the path of a file to write, e.g. {path / 'results.json'}.")
    if not path.parent.is_dir():
        raise FlagError(f"--{flag} {value}: directory {path.parent} does not exist; create it or give another path.")
    return path


def _exit(code: int) -> None:
    from llmjax.parallel import distributed  # noqa: PLC0415 - JAX is not imported for --help.

    distributed.exit_after_error(code)


def _reporting_errors(main):
    def wrapped(argv):
        try:
            return main(argv)
        except app.UsageError as error:  # Positional arguments the command does not take.
            hint = "" if str(error).startswith("usage:") else "; flags take the form --name=value"
            print(f"error: {error}{hint} (see {os.path.basename(argv[0])} --help).", file=sys.stderr, flush=True)
            _exit(EXIT_FLAG_ERROR)
        except LlmjaxError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            _exit(error.exit_code)
        except Exception:  # A bug: its traceback, and no hang in a multi-process job.
            traceback.print_exc()
            _exit(1)
    return wrapped


def run(main) -> None:
    child_processes.die_with_parent()  # A training llmjax-launch or llmjax-sweep started.
    # --help lists the main module's flags, which absl finds by the script's path: an entry
    # point's script defines none, the command's module (llmjax.cli.NAME) does.
    for flag in flags.FLAGS.get_key_flags_for_module(main.__module__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    cpu_runtime.configure()  # Before JAX starts its backend.
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news to a user.
    app.run(_reporting_errors(main), flags_parser=_parse_flags)
