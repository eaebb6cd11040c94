"""Bad input, whatever it is, ends in one clear error. Property tests (hypothesis) generate
invalid configs (wrong types, out-of-range values, unknown keys, combinations that do not fit),
broken config files, corrupted data (truncated .gz/.zst/.parquet, invalid JSON lines, binary
garbage, empty inputs, a Parquet file without the column, a damaged prepared dataset) and
damaged run directories (config.json edited or broken, a checkpoint of another model, a damaged
or missing tokenizer), run llmjax-train or llmjax-prepare on each, and check what the user gets:

  - a non-zero exit status and no Python traceback;
  - exactly one line starting with `error: `, which names the problem (the dotted config key,
    e.g. `model.num_kv_heads`, or the path of the file) and says what to do: it has an
    instruction (set, give, use, choose, raise, lower, delete, replace, restore, rerun, ... or
    "must" / "needs" with what works, or "did you mean"), matched by FIX below;
  - nothing compiled: Run.compile_steps, compile_eval_step and lower_train_step are patched
    to raise, and jax.monitoring's backend-compile event is counted (any XLA compilation, once
    the few tiny eager ops every run makes first, a PRNG key and scalars, are compiled);
  - the workdir (or llmjax-prepare's --out) as it was: absent if it was, else the same files
    with the same sizes and modification times; and a bad config prepares no data.

The commands run in this process, through the CLI's own layers (cli/app.py's flag parser and
error handler around cli/train.py's main; the preparation llmjax-prepare's main calls), since a
subprocess costs seconds of JAX start-up per input. `test_in_process_outcomes_match_the_real_commands`
runs five of the inputs through real `llmjax-train` / `llmjax-prepare` / `llmjax-sample`
processes and gets the same exit status and error line. Each property prints how many inputs it
tried, by kind (pytest -s or -rA shows it; also a junit property), and asserts a floor on the
number so that it cannot shrink unnoticed.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import io
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import jax
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from absl import flags
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import llmjax.cli.train as train_cli
from conftest import ROOT, train_env
from llmjax.cli.app import _parse_flags, _reporting_errors
from llmjax.config import INIT_MODES, OPTIMIZER_NAMES, SCHEDULES
from llmjax.data.prepare import PrepareOptions, prepare
from llmjax.model import registry
from llmjax.model.spec import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES
from llmjax.presets import SMOKE_RUN, compose
from llmjax.rundir import RunDir
from llmjax.run import Run, bootstrap
from llmjax.train.objectives.span_lengths import span_lengths

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections' loader.
FIX = re.compile(r"\b(set|give|use|choose|make|lower|raise|change|rerun|delete|remove|replace|restore|"
                 r"move|rename|name|pass|fix|define|build|install|prepare|train|see|must|needs?)\b|"
                 r"did you mean", re.IGNORECASE)
DEVICES = 8  # conftest.py's fake CPU devices: the mesh every in-process run sees.
CONFIGS = {"llama": "configs/tiny.py", "gpt2": "configs/gpt2_tiny.py", "bert": "configs/bert_tiny.py",
           "t5": "configs/t5_tiny.py", "lstm": "configs/lstm_tiny.py"}
PRESETS = {"llama": "tiny", "gpt2": "gpt2-tiny", "bert": "bert-tiny", "t5": "t5-tiny", "lstm": "lstm-tiny"}
SOURCE_RUN = ("--config.train.steps=2", "--config.optimizer.warmup_steps=1")  # The run the damaged workdirs copy.
OBJECTIVES = sorted({name for family in registry.names() for name in registry.get(family).objectives})
PROPERTY = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def base_config(family: str = "llama"):
    """What CONFIGS[family] gives (the same compose call), to read its values from."""
    return compose(PRESETS[family], data="stdlib_json", overrides=SMOKE_RUN)


# The harness ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    code: int | None  # The exit status; None when it got as far as compiling.
    stderr: str
    compiles: int  # XLA compilations, and calls of the compiling Run methods.

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


def assert_one_clear_error(outcome: Outcome, names, *, all_names=False) -> str:
    """The error line, after checking that `outcome` is one clear error naming one of `names`
    (with `all_names`, each of them) and saying what to do."""
    context = f"\n--- stderr ---\n{outcome.stderr[-3000:]}"
    assert outcome.compiles == 0, f"compiled before failing{context}"
    assert outcome.code not in (0, None), f"exit status {outcome.code}{context}"
    assert "Traceback" not in outcome.stderr, f"a traceback{context}"
    assert len(outcome.error_lines) == 1, f"{len(outcome.error_lines)} error lines{context}"
    line = outcome.error_lines[0]
    found = [str(name) in line for name in names]
    assert all(found) if all_names else any(found), f"names none of {list(map(str, names))}{context}"
    assert FIX.search(line.split(":", 1)[1]), f"no fix in the error{context}"
    return line


def snapshot(path: Path):
    """Every file and directory under `path` with each file's size and modification time; None
    when `path` does not exist."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


class _Compiling(BaseException):
    """Raised where a step would be compiled (a BaseException: no handler mistakes it for a bug)."""


class Harness:
    """Runs a command's code in this process as its CLI would, stderr captured."""

    def __init__(self, root: Path):
        self.root, self.cache = root, root / "cache"
        self.backend_compiles = 0

    def count(self, event: str, *_, **__) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.backend_compiles += 1

    def tmpdir(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.root, prefix="case-"))

    def call(self, body) -> Outcome:
        def compiling(*_, **__):
            raise _Compiling
        before, reached = self.backend_compiles, False
        stderr = io.StringIO()
        saved = {name: getattr(jax.config, name) for name in ("jax_compilation_cache_dir",
                                                              "jax_persistent_cache_min_compile_time_secs")}
        with contextlib.ExitStack() as stack:
            for method in ("compile_steps", "compile_eval_step", "lower_train_step"):
                stack.enter_context(mock.patch.object(Run, method, compiling))
            stack.enter_context(contextlib.redirect_stderr(stderr))
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            try:
                body()
                code = 0
            except SystemExit as exit_:
                code = exit_.code
                if isinstance(code, str):  # sys.exit("error: ...") prints its message and exits 1.
                    print(code, file=sys.stderr)
                    code = 1
                code = code or 0
            except _Compiling:
                code, reached = None, True
            finally:  # llmjax-train points JAX's compilation cache at the cache; not for other tests.
                for name, value in saved.items():
                    jax.config.update(name, value)
        return Outcome(code, stderr.getvalue(), self.backend_compiles - before + reached)

    def train(self, *args: str, workdir: Path, config: str = CONFIGS["llama"], spaced: bool = False) -> Outcome:
        """`llmjax-train --config=CONFIG --workdir=WORKDIR ARGS...` (`spaced`: `--config CONFIG`,
        as the README writes it): cli/app.py's flag parser, then its error handler around
        cli/train.py's main, as `run` does."""
        argv = ["llmjax-train", *(["--config", config] if spaced else [f"--config={config}"]), f"--workdir={workdir}", *args]

        def body():
            flags.FLAGS.unparse_flags()
            for name in [name for name in flags.FLAGS if name.startswith("config.")]:
                delattr(flags.FLAGS, name)  # The overrides of the previous command line.
            sys.modules.pop("config_config", None)  # ml_collections would load a config into the last one's module.
            with mock.patch.object(sys, "argv", argv):  # Where ml_collections reads the overrides.
                _reporting_errors(train_cli.main)(_parse_flags(argv))
        return self.call(body)

    def prepare(self, options: PrepareOptions, out: Path) -> Outcome:
        """llmjax-prepare: what its main calls once the flags are read, behind the CLI's handler."""
        return self.call(lambda: _reporting_errors(lambda _: prepare(options, out, log=print, progress=False))([]))

    def run_tokenizer(self, workdir: Path) -> Outcome:
        """What llmjax-sample and llmjax-export do first with a run: read its tokenizer."""
        return self.call(lambda: _reporting_errors(lambda _: RunDir(workdir).tokenizer)([]))


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    harness = Harness(tmp_path_factory.mktemp("bad-input"))
    bootstrap(base_config())  # JAX's eager ops (a PRNG key, scalars) compile once per process: not counted.
    jax.monitoring.register_event_duration_secs_listener(harness.count)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMJAX_CACHE", str(harness.cache))
        yield harness
    jax.monitoring.unregister_event_duration_listener(harness.count)
    flags.FLAGS.unparse_flags()


def try_each_kind(kinds: dict[str, tuple], check) -> list[str]:
    """Runs the property `check(case)` on `examples` cases of each kind's strategy, so that every
    kind is tried however hypothesis happens to draw; the kind of every input tried."""
    tried = []
    for kind, (strategy, examples) in kinds.items():
        _property(kind, strategy, examples, check, tried)
    return tried


def _property(kind: str, strategy, examples: int, check, tried: list[str]) -> None:
    @settings(PROPERTY, max_examples=examples)
    @given(case=strategy)
    def run(case):
        tried.append(kind)
        note(f"kind: {kind}; case: {case!r}")
        check(case)
    run()


def report(record_property, what: str, tried: list[str], floor: int) -> None:
    kinds = collections.Counter(tried)
    print(f"\n{what}: {len(tried)} inputs tried ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})")
    record_property("inputs_tried", len(tried))
    assert len(tried) >= floor, f"only {len(tried)} {what} tried; the property must try at least {floor}"


# Invalid configs -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConfigCase:
    family: str  # Of the config file the overrides apply to (CONFIGS).
    args: tuple[str, ...]  # --config.KEY=VALUE overrides.
    names: tuple[str, ...]  # What the error may name (any of them).


NONFINITE = st.sampled_from(["nan", "inf", "-inf"])
WORDS = st.from_regex(r"[a-z]{1,8}", fullmatch=True).filter(
    lambda w: w not in {"inf", "nan", "infinity", "true", "false", "t", "f", "yes", "no", "y", "n"})


def floats_outside(works):
    return st.one_of(NONFINITE, st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not works(v)).map(repr))


def ints_outside(works):
    return st.integers(-2**70, 2**70).filter(lambda v: not works(v)).map(str)


def not_one_of(allowed):
    return st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=12).filter(lambda v: v not in allowed)


# (family, key, command-line values it cannot take): each value is refused naming the key.
OUT_OF_RANGE = [
    *[("llama", key, ints_outside(lambda v: v >= 1)) for key in (
        "model.d_model", "model.num_layers", "model.max_seq_len", "model.num_heads", "model.num_kv_heads",
        "model.head_dim", "model.mlp_dim", "data.seq_len", "train.steps", "train.global_batch_size",
        "train.microbatches", "train.log_every", "train.eval_batches", "checkpoint.keep_last",
        "train.guard_patience")],
    *[("llama", key, ints_outside(lambda v: v >= 0)) for key in (
        "checkpoint.every_steps", "checkpoint.keep_every", "train.guard_max_rollbacks", "train.eval_every",
        "data.max_files", "train.loss_chunk_len")],
    ("llama", "model.vocab_size", ints_outside(lambda v: v >= 256 + 3)),  # Every byte and 3 special tokens.
    ("llama", "train.loss_chunk_len", st.integers(1, 63).filter(lambda v: 64 % v).map(str)),  # Divides data.seq_len.
    ("llama", "optimizer.warmup_steps", ints_outside(lambda v: 0 <= v < 20)),  # train.steps is 20.
    ("llama", "seed", ints_outside(lambda v: 0 <= v < 2**32)),
    ("llama", "data.val_percent", ints_outside(lambda v: 0 < v < 100)),
    ("llama", "data.eos_id", ints_outside(lambda v: v >= -1)),
    ("llama", "optimizer.learning_rate", floats_outside(lambda v: v > 0)),
    ("llama", "optimizer.b1", floats_outside(lambda v: 0 <= v < 1)),
    ("llama", "optimizer.b2", floats_outside(lambda v: 0 <= v < 1)),
    ("llama", "optimizer.eps", floats_outside(lambda v: v > 0)),
    ("llama", "optimizer.weight_decay", floats_outside(lambda v: v >= 0)),
    ("llama", "optimizer.min_lr_ratio", floats_outside(lambda v: 0 <= v <= 1)),
    ("llama", "optimizer.grad_clip", floats_outside(lambda v: v >= 0)),
    ("llama", "optimizer.muon_beta", floats_outside(lambda v: 0 <= v < 1)),
    ("llama", "optimizer.muon_ns_steps", ints_outside(lambda v: v >= 1)),
    ("llama", "optimizer.muon_rms", floats_outside(lambda v: v > 0)),
    ("llama", "train.z_loss", floats_outside(lambda v: v >= 0)),
    ("llama", "train.guard_spike_factor", floats_outside(lambda v: v == 0 or v > 1)),
    ("llama", "checkpoint.every_minutes", floats_outside(lambda v: 0 <= v * 60 < math.inf)),  # Seconds, finite.
    ("llama", "checkpoint.save_timeout_minutes", floats_outside(lambda v: 1 <= v * 60 < math.inf)),
    ("llama", "model.init_scale", floats_outside(lambda v: v > 0)),
    ("llama", "model.norm_eps", floats_outside(lambda v: v > 0)),
    ("llama", "model.rope_theta", floats_outside(lambda v: v > 0)),
    ("lstm", "model.forget_bias", NONFINITE),
    ("lstm", "model.hidden_dim", ints_outside(lambda v: v >= 1)),
    ("lstm", "model.proj_dim", ints_outside(lambda v: v >= 0)),
    ("llama", "model.scan_unroll", ints_outside(lambda v: v >= 0)),
    ("t5", "model.scan_unroll", ints_outside(lambda v: v >= 0)),
    ("t5", "model.relative_max_distance", ints_outside(lambda v: v > 32 // 2)),  # relative_buckets is 32.
    ("t5", "model.relative_buckets", ints_outside(lambda v: v >= 4 and v % 4 == 0)),
    ("t5", "objective.noise_density", floats_outside(lambda v: 0 < v < 1)),
    ("t5", "objective.mean_span_length", floats_outside(lambda v: v >= 1)),
    ("bert", "objective.mask_rate", floats_outside(lambda v: 0 < v <= 1)),
    ("bert", "objective.mask_token_rate", floats_outside(lambda v: 0 <= v <= 0.9)),  # random_token_rate is 0.1.
    ("bert", "objective.random_token_rate", floats_outside(lambda v: 0 <= v <= 0.2)),  # mask_token_rate is 0.8.
    ("bert", "model.type_vocab_size", ints_outside(lambda v: v >= 0)),
    ("llama", "optimizer.schedule", not_one_of(SCHEDULES)),
    ("llama", "optimizer.name", not_one_of(OPTIMIZER_NAMES)),
    ("llama", "checkpoint.init_mode", not_one_of(INIT_MODES)),
    ("llama", "model.dtype", not_one_of(DTYPES)),
    ("llama", "model.param_dtype", not_one_of(DTYPES)),
    ("llama", "model.remat", not_one_of(REMAT_POLICIES)),
    ("llama", "model.attention_impl", not_one_of(ATTENTION_IMPLS)),
    ("t5", "model.attention_impl", st.just("splash")),  # No score bias in that kernel.
    ("llama", "model.family", not_one_of(registry.names())),
    ("llama", "objective.name", not_one_of(OBJECTIVES)),
    ("llama", "train.inject_nan_at", st.lists(st.integers(0, 99).map(str), max_size=3).flatmap(
        lambda good: st.text(min_size=1).filter(lambda x: "," not in x and x.strip() and not _is_int(x)).map(
            lambda bad: ",".join([*good, bad])))),
    ("llama", "data.mixture", st.one_of(WORDS, WORDS.map(lambda w: f"{w}:"), WORDS.map(lambda w: f"{w}:{w}"),
                                        st.floats(max_value=0).map(lambda v: f"web:{v!r}"), WORDS.map(lambda w: f":{w}"),
                                        st.just("web:inf,code:1"))),
    ("llama", "checkpoint.init_from", st.one_of(WORDS.map(lambda w: f"/nonexistent/{w}"),
                                                 WORDS.map(lambda w: f"/tmp@{w}"))),
]
# Values whose error names the value (a path or a pattern) rather than the key.
BAD_PATHS = [
    ("data.source", WORDS.map(lambda w: f"/nonexistent/{w}")),
    ("data.mixture", WORDS.map(lambda w: f"/nonexistent/{w}:1")),
    ("data.tokenizer", WORDS.map(lambda w: f"/nonexistent/{w}.json")),
]


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def out_of_range(family: str, key: str, values):
    return values.map(lambda value: ConfigCase(family, (f"--config.{key}={value}",), (key,)))


def bad_path(key: str, values):
    return values.map(lambda value: ConfigCase("llama", (f"--config.{key}={value}",), (value.removesuffix(":1"),)))


@st.composite
def bad_glob(draw) -> ConfigCase:
    pattern = draw(st.one_of(st.sampled_from(["", ".", "a**b"]), WORDS.map(lambda w: f"/{w}/*.py")))
    return ConfigCase("llama", (f"--config.data.glob={pattern}",), ("data.glob",))


def _leaves(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@st.composite
def wrong_type(draw) -> ConfigCase:
    """A value that does not parse as the field's type: a word for a number or a bool."""
    family = draw(st.sampled_from(sorted(CONFIGS)))
    typed = [key for key, value in _leaves(base_config(family)) if isinstance(value, (int, float))]
    key = draw(st.sampled_from(typed))
    return ConfigCase(family, (f"--config.{key}={draw(WORDS)}",), (key,))


@st.composite
def unknown_key(draw) -> ConfigCase:
    config = base_config()
    sections = ["", *sorted(key.rsplit(".", 1)[0] + "." for key, _ in _leaves(config) if "." in key)]
    section = draw(st.sampled_from(sorted(set(sections))))
    node = config
    for part in filter(None, section.split(".")):
        node = node[part]
    leaf = draw(st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(lambda k: k not in node))
    return ConfigCase("llama", (f"--config.{section}{leaf}=1",), (leaf,))


@st.composite
def heads_vs_kv_heads(draw) -> ConfigCase:
    heads, kv = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    assume(heads % kv)
    head_dim = 2 * draw(st.integers(1, 16))
    return ConfigCase("llama", (f"--config.model.num_heads={heads}", f"--config.model.num_kv_heads={kv}",
                                f"--config.model.head_dim={head_dim}", f"--config.model.d_model={heads * head_dim}"),
                      ("model.num_kv_heads",))


@st.composite
def width_vs_heads(draw) -> ConfigCase:
    """GPT-2 and BERT split d_model into their heads (Llama and T5 need not)."""
    family = draw(st.sampled_from(["gpt2", "bert"]))
    heads, head_dim, d_model = draw(st.integers(1, 8)), 2 * draw(st.integers(1, 16)), draw(st.integers(1, 512))
    assume(d_model != heads * head_dim)
    return ConfigCase(family, (f"--config.model.num_heads={heads}", f"--config.model.head_dim={head_dim}",
                               f"--config.model.d_model={d_model}"), ("model.d_model",))


AXES = ("data", "fsdp", "sequence", "tensor")


@st.composite
def mesh_vs_devices(draw) -> ConfigCase:
    sizes = dict(zip(AXES, draw(st.lists(st.integers(-3, 9), min_size=4, max_size=4))))
    fixed = [size for size in sizes.values() if size != -1]
    product = 1
    for size in fixed:
        product *= size
    fits = (all(size >= 1 for size in fixed) and
            (product == DEVICES if len(fixed) == 4 else len(fixed) == 3 and DEVICES % product == 0))
    dcn = draw(st.sampled_from([None, *AXES]))
    assume(not fits or dcn)
    args = tuple(f"--config.mesh.ici.{axis}={size}" for axis, size in sizes.items())
    if dcn:  # Across hosts, in a job of one process.
        args += (f"--config.mesh.dcn.{dcn}={draw(st.integers(2, 4))}",)
    return ConfigCase(draw(st.sampled_from(sorted(CONFIGS))), args, ("mesh.ici", "mesh.dcn"))


@st.composite
def objective_vs_family(draw) -> ConfigCase:
    family = draw(st.sampled_from(sorted(CONFIGS)))
    name = draw(st.sampled_from([n for n in OBJECTIVES if n not in registry.get(family).objectives]))
    return ConfigCase(family, (f"--config.objective.name={name}",), ("objective.name",))


@st.composite
def seq_len_vs_sequence_axis(draw) -> ConfigCase:
    axis = draw(st.sampled_from([2, 4, 8]))
    seq = draw(st.integers(1, 64).filter(lambda s: s % axis))
    return ConfigCase("llama", (f"--config.mesh.ici.sequence={axis}", f"--config.data.seq_len={seq}"), ("data.seq_len",))


@st.composite
def batch_vs_microbatches(draw) -> ConfigCase:
    batch, micro = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    assume(batch % micro)
    return ConfigCase("llama", (f"--config.train.global_batch_size={batch}", f"--config.train.microbatches={micro}"),
                      ("train.global_batch_size",))


@st.composite
def batch_vs_data_shards(draw) -> ConfigCase:
    """Microbatches that the data axis (all 8 devices) cannot split evenly."""
    micro, per = draw(st.integers(1, 8)), draw(st.integers(1, 64).filter(lambda b: b % DEVICES))
    return ConfigCase("llama", (f"--config.train.global_batch_size={micro * per}", f"--config.train.microbatches={micro}"),
                      ("train.global_batch_size",))


@st.composite
def targets_vs_sequence_axis(draw) -> ConfigCase:
    """T5's decoder length, which the sequence axis splits too."""
    axis = draw(st.sampled_from([2, 4, 8]))
    targets = draw(st.integers(span_lengths(64)[1], 200).filter(lambda t: t % axis))  # At least what data.seq_len=64 needs.
    return ConfigCase("t5", (f"--config.mesh.ici.sequence={axis}", f"--config.objective.targets_length={targets}"),
                      ("objective.targets_length",))


@st.composite
def widths_vs_tensor_axis(draw) -> ConfigCase:
    """A model the tensor axis cannot split: the error names one of the widths it does not divide."""
    tensor = draw(st.sampled_from([2, 4, 8]))
    widths = {"model.num_heads": 4 * draw(st.integers(1, 4)), "model.mlp_dim": draw(st.integers(1, 256)),
              "model.vocab_size": draw(st.integers(259, 1024))}
    widths["model.num_kv_heads"] = draw(st.sampled_from([d for d in range(1, 17) if widths["model.num_heads"] % d == 0]))
    names = tuple(key for key, value in widths.items() if value % tensor)
    assume(names)
    args = (f"--config.mesh.ici.tensor={tensor}", "--config.model.head_dim=2",
            f"--config.model.d_model={2 * widths['model.num_heads']}", *(f"--config.{k}={v}" for k, v in widths.items()))
    return ConfigCase("llama", args, names)


@st.composite
def lstm_vs_axis(draw) -> ConfigCase:
    axis = draw(st.sampled_from(["tensor", "sequence"]))
    return ConfigCase("lstm", (f"--config.mesh.ici.{axis}={draw(st.sampled_from([2, 4, 8]))}",), (f"mesh.ici.{axis}",))


# The MoE variant's fields, on the tiny Llama with 4 experts of 64 and 2 layers.
MOE_ON = ("--config.model.num_experts=4", "--config.model.expert_mlp_dim=64")
MOE_OUT_OF_RANGE = [
    ("model.num_experts", ints_outside(lambda v: v >= 0)),
    ("model.experts_per_token", ints_outside(lambda v: 1 <= v <= 4)),
    ("model.moe_every", ints_outside(lambda v: v in (1, 2))),  # Divides num_layers=2.
    ("model.expert_mlp_dim", ints_outside(lambda v: v >= 0)),
    ("model.shared_experts", ints_outside(lambda v: v >= 0)),
    ("model.capacity_factor", floats_outside(lambda v: v >= 0)),
    ("model.load_balancing_weight", floats_outside(lambda v: v >= 0)),
    ("model.router_z_weight", floats_outside(lambda v: v >= 0)),
    ("model.router", not_one_of(("topk_softmax", "softmax_topk"))),
]


@st.composite
def moe_out_of_range(draw) -> ConfigCase:
    key, values = draw(st.sampled_from(MOE_OUT_OF_RANGE))
    return ConfigCase("llama", (*MOE_ON, f"--config.{key}={draw(values)}"), (key,))


# Kind of bad config: (strategy, inputs to try).
CONFIG_KINDS = {
    **{f"out of range: {key} ({family})": (out_of_range(family, key, values), 3) for family, key, values in OUT_OF_RANGE},
    **{f"missing path: {key}": (bad_path(key, values), 3) for key, values in BAD_PATHS},
    "unusable data.glob": (bad_glob(), 5),
    "wrong type": (wrong_type(), 25),
    "unknown key": (unknown_key(), 15),
    "heads vs kv heads": (heads_vs_kv_heads(), 8),
    "width vs heads": (width_vs_heads(), 8),
    "mesh vs devices": (mesh_vs_devices(), 20),
    "objective vs family": (objective_vs_family(), 10),
    "seq_len vs sequence axis": (seq_len_vs_sequence_axis(), 6),
    "seq_len vs max_seq_len": (st.integers(65, 10**6).map(
        lambda seq: ConfigCase("llama", (f"--config.data.seq_len={seq}",), ("data.seq_len",))), 4),
    "batch vs microbatches": (batch_vs_microbatches(), 6),
    "batch vs data shards": (batch_vs_data_shards(), 6),
    "targets vs sequence axis": (targets_vs_sequence_axis(), 6),
    "widths vs tensor axis": (widths_vs_tensor_axis(), 8),
    "lstm vs axis": (lstm_vs_axis(), 6),
    "moe fields": (moe_out_of_range(), 12),
}


def test_invalid_configs_end_in_one_clear_error(harness, record_property):
    def check(case: ConfigCase):
        workdir, cache = harness.tmpdir() / "run", snapshot(harness.cache)
        outcome = harness.train(*case.args, workdir=workdir, config=CONFIGS[case.family])
        assert_one_clear_error(outcome, case.names)
        assert not workdir.exists()
        assert snapshot(harness.cache) == cache, "a bad config prepared data"

    tried = try_each_kind(CONFIG_KINDS, check)
    report(record_property, "invalid configs", [kind.split(":")[0] for kind in tried], floor=300)


# Broken config files -------------------------------------------------------------------------

CONFIG_FILE_BODIES = {
    "wrong type": "def get_config():\n    c = compose('tiny')\n    c.{key} = {value!r}\n    return c\n",
    "unknown key": "def get_config():\n    c = compose('tiny')\n    c.model.{word} = 1\n    return c\n",
    "unknown preset": "def get_config():\n    return compose({word!r})\n",
    "bad override": "def get_config():\n    return compose('tiny', overrides={{{key!r}: {value!r}}})\n",
    "syntax error": "def get_config(:\n    return compose('tiny')\n",
    "missing import": "import {word}_not_installed\n",
    "no get_config": "def get_konfig():\n    return compose('tiny')\n",
    "not a ConfigDict": "def get_config():\n    return {{'model': {{'num_layers': 2}}}}\n",
}


@st.composite
def config_file(draw, body: str) -> str:
    key = draw(st.sampled_from(["model.num_layers", "model.d_model", "train.steps", "data.seq_len", "optimizer.b1"]))
    word = draw(WORDS.filter(lambda w: w not in base_config().model and registry.find_preset(w) is None))
    return "from llmjax.presets import compose\n\n" + body.format(key=key, value=draw(WORDS), word=word)


def test_broken_config_files_end_in_one_clear_error(harness, record_property):
    def check(text: str):
        config = harness.tmpdir() / "config.py"
        config.write_text(text)
        for spaced in (False, True):  # --config=FILE and --config FILE
            workdir = harness.tmpdir() / "run"
            assert_one_clear_error(harness.train(workdir=workdir, config=str(config), spaced=spaced), [config])
            assert not workdir.exists()

    tried = try_each_kind({kind: (config_file(body), 4) for kind, body in CONFIG_FILE_BODIES.items()}, check)
    missing = harness.tmpdir() / "missing.py"
    assert_one_clear_error(harness.train(workdir=harness.tmpdir() / "run", config=str(missing)), [missing])
    report(record_property, "broken config files", [*tried, "missing file"], floor=30)


# Corrupted raw data --------------------------------------------------------------------------

DOCUMENTS = [f"def f{i}(x):\n    return x * {i} + {i + 1}\n" * (i % 4 + 1) for i in range(12)]


@pytest.fixture(scope="module")
def tokenizer_file(harness):
    """A 280-token BPE for llmjax-prepare --tokenizer."""
    text = harness.tmpdir()
    for i, doc in enumerate(DOCUMENTS):
        (text / f"{i}.txt").write_text(doc)
    out = prepare(PrepareOptions(inputs=(str(text),), vocab_size=280, workers=1), harness.tmpdir() / "ds",
                  log=lambda *_: None, progress=False)
    return out / "tokenizer.json"


def jsonl(docs, field="text") -> bytes:
    return "".join(json.dumps({field: d}) + "\n" for d in docs).encode()


def parquet(docs, column="text") -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({column: docs}), buffer)
    return buffer.getvalue()


COMPRESS = {"": lambda b: b, ".gz": gzip.compress, ".zst": lambda b: zstandard.ZstdCompressor().compress(b)}
WHOLE = {".jsonl": jsonl(DOCUMENTS), ".txt": DOCUMENTS[0].encode(), ".parquet": parquet(DOCUMENTS)}


@st.composite
def truncated(draw):
    """({file name: bytes}, what the error must name: a file name, or "" for the input directory)."""
    form, compression = draw(st.sampled_from([(".jsonl", ".gz"), (".jsonl", ".zst"), (".txt", ".gz"), (".txt", ".zst"),
                                              (".parquet", ""), (".parquet", ".gz"), (".parquet", ".zst")]))
    whole = COMPRESS[compression](WHOLE[form])
    cut = draw(st.integers(0 if not compression else 1, len(whole) - 1))  # An empty .gz/.zst is an empty file.
    return {f"bad{form}{compression}": whole[:cut]}, f"bad{form}{compression}"


@st.composite
def garbage(draw):
    name = "bad" + draw(st.sampled_from([".jsonl", ".json", ".jsonl.gz", ".jsonl.zst", ".txt.gz", ".txt.zst",
                                         ".parquet", ".parquet.gz", ".parquet.zst"]))
    data = draw(st.binary(min_size=1, max_size=600))
    assume(data.strip())  # Blank lines are skipped, not an error.
    return {name: data}, name


@st.composite
def invalid_json_line(draw):
    good = DOCUMENTS[:draw(st.integers(0, 5))]
    record = json.dumps({"text": draw(st.text(max_size=20))})
    bad = draw(st.one_of(
        st.integers(1, len(record) - 1).map(lambda cut: record[:cut]),  # Cut short: never valid JSON.
        st.one_of(st.integers(), st.lists(st.integers()), st.text(), st.none(), st.booleans()).map(json.dumps),
        WORDS.filter(lambda w: w != "text").map(lambda w: json.dumps({w: "no text field"})),
        st.one_of(st.integers(), st.lists(st.text()), st.none()).map(lambda v: json.dumps({"text": v})),
        st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b.strip() and _json(b) is NOT_JSON).map(
            lambda b: b.decode("latin-1"))))
    assume(bad.strip())
    compression = draw(st.sampled_from(sorted(COMPRESS)))
    name = f"bad.jsonl{compression}"
    data = jsonl(good) + bad.encode("latin-1") + b"\n" + jsonl(DOCUMENTS[5:7])
    return {name: COMPRESS[compression](data)}, f"{name}:{len(good) + 1}"


@st.composite
def parquet_without_the_column(draw):
    column = draw(WORDS.filter(lambda w: w != "text"))
    compression = draw(st.sampled_from(sorted(COMPRESS)))
    return {f"bad.parquet{compression}": COMPRESS[compression](parquet(DOCUMENTS, column))}, f"bad.parquet{compression}"


EMPTY = {"a.txt": b"", "b.txt": b" \n\t ", "c.jsonl": b"", "d.jsonl": b"\n\n", "e.jsonl.gz": gzip.compress(b""),
         "f.jsonl.zst": COMPRESS[".zst"](b""), "g.jsonl": jsonl([""]), "h.parquet": parquet([""])}
CORRUPTIONS = {"truncated": truncated(), "binary garbage": garbage(), "invalid JSON line": invalid_json_line(),
               "parquet without the column": parquet_without_the_column(),
               "only empty files": st.lists(st.sampled_from(sorted(EMPTY)), min_size=1, max_size=4, unique=True).map(
                   lambda names: ({name: EMPTY[name] for name in names}, ""))}
COMMANDS = ("llmjax-prepare", "llmjax-prepare --tokenizer", "llmjax-train")


NOT_JSON = object()


def _json(data: bytes):
    """The JSON value `data` holds, or NOT_JSON."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return NOT_JSON


def test_corrupted_data_ends_in_one_clear_error(harness, tokenizer_file, record_property):
    def check(case):
        (files, named), good, command, workers = case
        inputs = harness.tmpdir()
        for i, doc in enumerate(DOCUMENTS[:good if named else 0]):  # Intact files beside the bad one.
            (inputs / f"good{i}.txt").write_text(doc)
        for name, data in files.items():
            (inputs / name).write_bytes(data)
        if command == "llmjax-train":
            workdir, datasets = harness.tmpdir() / "run", _dataset_dirs(harness.cache)
            outcome = harness.train(f"--config.data.source={inputs}", "--config.data.glob=**/*", workdir=workdir)
            assert not workdir.exists()
            assert _dataset_dirs(harness.cache) == datasets, "a failed preparation was left in the cache"
        else:
            out = harness.tmpdir() / "out"
            options = PrepareOptions(inputs=(str(inputs),), vocab_size=280, workers=workers,
                                     tokenizer=str(tokenizer_file) if "--tokenizer" in command else "")
            outcome = harness.prepare(options, out)
            assert not out.exists(), sorted(p.name for p in out.iterdir())
        assert_one_clear_error(outcome, [inputs / named])

    def cases(corruption, command, workers=1):
        good = st.integers(1 if workers > 1 else 0, 3)  # Two files at least make two units for the workers.
        return st.tuples(CORRUPTIONS[corruption], good, st.just(command), st.just(workers))

    kinds = {f"{corruption} ({command})": (cases(corruption, command), 5) for corruption in CORRUPTIONS
             for command in COMMANDS}
    kinds |= {f"{corruption} (llmjax-prepare --tokenizer --workers=2)":  # Errors raised in worker processes.
              (cases(corruption, "llmjax-prepare --tokenizer", 2), 2) for corruption in ("truncated", "invalid JSON line")}
    report(record_property, "corrupted data inputs", try_each_kind(kinds, check), floor=70)


def _dataset_dirs(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.is_dir()} if cache.exists() else set()


# A damaged prepared dataset ------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(harness, tokenizer_file):
    text = harness.tmpdir()
    for i, doc in enumerate(DOCUMENTS):
        (text / f"{i}.txt").write_text(doc)
    return prepare(PrepareOptions(inputs=(str(text),), tokenizer=str(tokenizer_file), val_percent=20, workers=1),
                   harness.tmpdir() / "dataset", log=lambda *_: None, progress=False)


MANIFEST_FIELDS = [("tokenizer",), ("tokenizer", "file"), ("tokenizer", "fingerprint"), ("tokenizer", "vocab_size"),
                   ("tokenizer", "eos_id"), ("tokenizer", "pad_id"), ("token_dtype",), ("splits",), ("splits", "train"),
                   ("splits", "val"), ("splits", "train", "shards"), ("splits", "val", "tokens"),
                   ("unigram_entropy_nats",)]


DATASET_DAMAGE = ("manifest bytes", "manifest not an object", "manifest field missing", "manifest field mistyped",
                  "data file changed", "plan.json damaged")


@st.composite
def dataset_damage(draw, kind: str):
    """(kind, damage(directory) -> the damaged file's name)."""
    if kind == "manifest bytes":
        data = draw(st.one_of(st.binary(max_size=200), st.integers(0, 10**6).map(lambda n: ("cut", n))))
        change = lambda d: _write(d / "manifest.json",  # noqa: E731
                                  data if isinstance(data, bytes) else _cut(d / "manifest.json", data[1]))
    elif kind == "manifest not an object":
        value = draw(st.one_of(st.integers(), st.lists(st.integers()), st.text(), st.none()))
        change = lambda d: _write(d / "manifest.json", json.dumps(value).encode())  # noqa: E731
    elif kind in ("manifest field missing", "manifest field mistyped"):
        if kind.endswith("missing"):
            path, value = draw(st.sampled_from(MANIFEST_FIELDS)), None
        else:  # The fingerprint and padding id are names, read as they are; a file name must be a string.
            path = draw(st.sampled_from([f for f in MANIFEST_FIELDS if f[-1] not in ("fingerprint", "pad_id")]))
            value = draw(st.lists(st.integers(), max_size=2) if path[-1] == "file" else
                         st.one_of(WORDS, st.lists(st.integers(), max_size=2)))
        change = lambda d: _edit_json(d / "manifest.json", path, value)  # noqa: E731
    elif kind == "data file changed":
        how = draw(st.sampled_from(["flip", "truncate", "delete"]))
        index = draw(st.integers(0, 99))

        def change(d):
            names = [n for n in sorted(json.loads((d / "manifest.json").read_text())["sha256"]) if (d / n).stat().st_size]
            target = d / names[index % len(names)]
            data = target.read_bytes()
            if how == "delete":
                target.unlink()
            else:
                _write(target, data[:-1] if how == "truncate" else bytes([data[0] ^ 0xFF]) + data[1:])
            return target.name
    else:
        data = draw(st.one_of(st.binary(max_size=100), st.sampled_from([b"[]", b"{}", b'{"identity": {}}'])))
        change = lambda d: _write(d / "plan.json", data)  # noqa: E731
    _note_draws(locals())
    return kind, change


def _cut(path: Path, n: int) -> bytes:
    """The file's first bytes, fewer than all."""
    data = path.read_bytes()
    return data[:n % len(data)]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return path.name


def _edit_json(path: Path, keys: tuple[str, ...], value) -> str:
    """Sets (or with value None, deletes) a nested key of a JSON file."""
    document = json.loads(path.read_text())
    node = document
    for key in keys[:-1]:
        node = node[key]
    if value is None:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    path.write_text(json.dumps(document))
    return path.name


def test_a_dataset_without_held_out_documents_is_refused_before_compiling(harness, tokenizer_file):
    text = harness.tmpdir()
    for i, doc in enumerate(DOCUMENTS):
        (text / f"{i}.txt").write_text(doc)
    dataset = prepare(PrepareOptions(inputs=(str(text),), tokenizer=str(tokenizer_file), val_percent=0, workers=1),
                      harness.tmpdir() / "no-val", log=lambda *_: None, progress=False)
    workdir = harness.tmpdir() / "run"
    line = assert_one_clear_error(harness.train(f"--config.data.source={dataset}", workdir=workdir), [dataset])
    assert "has no validation tokens" in line
    assert not workdir.exists()


def test_a_damaged_prepared_dataset_ends_in_one_clear_error(harness, prepared, tokenizer_file, record_property):
    def check(damage):
        kind, change = damage
        dataset = harness.tmpdir() / "dataset"
        shutil.copytree(prepared, dataset)
        damaged = dataset / change(dataset)
        if kind == "plan.json damaged":  # Preparing into it again (llmjax-prepare --out).
            before = snapshot(dataset)
            options = PrepareOptions(inputs=(str(harness.tmpdir()),), tokenizer=str(tokenizer_file), workers=1)
            for i, doc in enumerate(DOCUMENTS):
                (Path(options.inputs[0]) / f"{i}.txt").write_text(doc)
            assert_one_clear_error(harness.prepare(options, dataset), [damaged])
            assert snapshot(dataset) == before
            return
        workdir = harness.tmpdir() / "run"
        assert_one_clear_error(harness.train(f"--config.data.source={dataset}", workdir=workdir), [damaged])
        assert not workdir.exists()

    tried = try_each_kind({kind: (dataset_damage(kind), 6) for kind in DATASET_DAMAGE}, check)
    report(record_property, "damaged prepared datasets", tried, floor=32)


# Damaged run directories ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(harness):
    """A finished run of configs/tiny.py (2 steps, one checkpoint), trained here."""
    workdir = harness.tmpdir() / "source-run"
    config = compose(PRESETS["llama"], data="stdlib_json",
                     overrides=SMOKE_RUN | {"train.steps": 2, "optimizer.warmup_steps": 1})
    with contextlib.redirect_stdout(io.StringIO()):
        from llmjax.train.loop import train  # noqa: PLC0415 - JAX's steps are only compiled here.
        train(config, str(workdir), log=lambda *_, **__: None)
    assert RunDir(workdir).steps() == [2]
    return workdir


# Another shape of the run's model: (overrides, config.json edits), e.g. wider heads.
OTHER_MODELS = [
    (("--config.model.head_dim=12", "--config.model.d_model=48"), {"head_dim": 12, "d_model": 48}),
    (("--config.model.num_layers=3",), {"num_layers": 3}),
    (("--config.model.mlp_dim=96",), {"mlp_dim": 96}),
    (("--config.model.num_kv_heads=4",), {"num_kv_heads": 4}),
    (("--config.model.tie_embeddings=False",), {"tie_embeddings": False}),
]
# Identity fields and another value each: config.json edited to say another run.
OTHER_RUNS = [("model", "d_model", 96), ("model", "num_layers", 5), ("model", "vocab_size", 1024),
              ("data", "seq_len", 32), ("data", "glob", "*.py"), ("data", "val_percent", 5), ("seed", None, 7),
              ("objective", "name", "prefix_lm"), ("model", "dtype", "float32")]


RUN_DAMAGE = {  # Kind: inputs to try.
    "config.json bytes": 4, "config.json not an object": 3, "config.json section not an object": 3,
    "config.json value mistyped": 5, "config.json unknown key": 3, "config.json unknown name": 3,
    "config.json of another run": 5, "checkpoint of another model": 5, "tokenizer damaged": 5,
    "tokenizer ids damaged": 4, "tokenizer of another dataset": 1, "tokenizer missing": 1, "checkpoints is a file": 1}


@st.composite
def run_damage(draw, kind: str, other_tokenizer: Path):
    """(damage(workdir) -> (what the error must name, all of it?), command, extra args)."""
    command, args = "llmjax-train", ()
    if kind == "config.json bytes":
        data = draw(st.one_of(st.binary(max_size=300).filter(lambda b: not isinstance(_json(b), dict)),
                              st.integers(0, 10**6).map(lambda n: ("cut", n))))

        def damage(w):
            config = w / "config.json"
            _write(config, data if isinstance(data, bytes) else _cut(config, data[1]))
            return [config], False
    elif kind == "config.json not an object":
        value = draw(st.one_of(st.integers(), st.lists(st.integers()), st.text(), st.none(), st.booleans()))

        def damage(w):
            _write(w / "config.json", json.dumps(value).encode())
            return [w / "config.json"], False
    elif kind == "config.json section not an object":
        section = draw(st.sampled_from(["model", "objective", "data", "train", "optimizer", "checkpoint", "mesh",
                                        "tracking"]))
        value = draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=2), WORDS))

        def damage(w):
            _edit_json(w / "config.json", (section,), value)
            return [w / "config.json"], False
    elif kind == "config.json value mistyped":
        key = draw(st.sampled_from([k for k, v in _leaves(base_config()) if not isinstance(v, str) and v is not None]))
        value = draw(st.one_of(WORDS, st.lists(st.integers(), max_size=2), st.dictionaries(WORDS, st.integers(), min_size=1,
                                                                                         max_size=1)))

        def damage(w):
            _edit_json(w / "config.json", tuple(key.split(".")), value)
            return [w / "config.json", key], True
    elif kind == "config.json unknown key":
        section = draw(st.sampled_from(["", "model.", "data.", "train.", "optimizer."]))
        leaf = draw(st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True).filter(
            lambda k: k not in dict(_leaves(base_config())) and f"{section}{k}" not in dict(_leaves(base_config()))
            and k not in base_config()))

        def damage(w):
            _edit_json(w / "config.json", tuple(filter(None, section.split("."))) + (leaf,), 1)
            return [w / "config.json", f"{section}{leaf}"], True
    elif kind == "config.json unknown name":
        key = draw(st.sampled_from([("model", "family"), ("objective", "name")]))
        name = draw(WORDS.filter(lambda w: w not in registry.names() and w not in OBJECTIVES))

        def damage(w):
            _edit_json(w / "config.json", key, name)
            return [w / "config.json"], False
    elif kind == "config.json of another run":
        section, key, value = draw(st.sampled_from(OTHER_RUNS))

        def damage(w):
            _edit_json(w / "config.json", (section, key) if key else (section,), value)
            return [f"{section}.{key}" if key else section], False
    elif kind == "checkpoint of another model":
        args, edits = draw(st.sampled_from(OTHER_MODELS))

        def damage(w):
            for key, value in edits.items():
                _edit_json(w / "config.json", ("model", key), value)
            return [w / "checkpoints"], False
    elif kind in ("tokenizer damaged", "tokenizer missing"):
        command = draw(st.sampled_from(["llmjax-train", "llmjax-sample"])) if kind == "tokenizer damaged" else "llmjax-sample"
        data = draw(st.one_of(st.binary(max_size=200), st.integers(0, 10**6).map(lambda n: ("cut", n)),
                              st.sampled_from([b"{}", b"[]", b'{"model": 1}'])))

        def damage(w):
            tokenizer = w / "tokenizer.json"
            if kind == "tokenizer missing":
                tokenizer.unlink()
            else:
                _write(tokenizer, data if isinstance(data, bytes) else _cut(tokenizer, data[1]))
            return [tokenizer, f"{w} has no tokenizer.json"], False
    elif kind == "tokenizer ids damaged":
        data = draw(st.one_of(st.binary(max_size=100), st.sampled_from([b"[]", b"{}", b'{"eos_id": "x"}',
                                                                         b'{"eos_id": 100000}', b'{"eos_id": -7}'])))

        def damage(w):
            _write(w / "tokenizer_ids.json", data)
            return [w / "tokenizer_ids.json", w / "tokenizer.json"], False
    elif kind == "tokenizer of another dataset":
        def damage(w):
            shutil.copyfile(other_tokenizer, w / "tokenizer.json")
            (w / "tokenizer_ids.json").unlink()
            return [w], False
    else:
        def damage(w):
            shutil.rmtree(w / "checkpoints")
            _write(w / "checkpoints", b"not a directory")
            return [w / "checkpoints"], False
    _note_draws(locals())
    return damage, command, args


def _note_draws(scope: dict) -> None:
    """Shows what a damage strategy drew when a property fails (its result is a function)."""
    note("drawn: " + ", ".join(f"{k}={v!r}" for k, v in scope.items() if k not in ("draw", "damage", "change", "kind",
                                                                                  "other_tokenizer")))


def test_a_damaged_run_directory_ends_in_one_clear_error(harness, trained_run, tokenizer_file, record_property):
    def check(case):
        damage, command, args = case
        workdir = harness.tmpdir() / "run"
        shutil.copytree(trained_run, workdir)
        names, all_names = damage(workdir)
        before = snapshot(workdir)
        if command == "llmjax-sample":
            outcome = harness.run_tokenizer(workdir)
        else:
            outcome = harness.train(*SOURCE_RUN, *args, workdir=workdir)
        assert_one_clear_error(outcome, names, all_names=all_names)
        assert snapshot(workdir) == before

    kinds = {kind: (run_damage(kind, tokenizer_file), examples) for kind, examples in RUN_DAMAGE.items()}
    report(record_property, "damaged run directories", try_each_kind(kinds, check), floor=38)


# The in-process harness gives what users see -------------------------------------------------

def test_in_process_outcomes_match_the_real_commands(harness, trained_run, tokenizer_file):
    """Five of the inputs above, each run in this process and by the real command in its own
    process: the same exit status and the same error line, and the workdir (--out) left as it was."""
    root = harness.tmpdir()
    (root / "in").mkdir()
    (root / "in" / "bad.jsonl.zst").write_bytes(COMPRESS[".zst"](jsonl(DOCUMENTS))[:-9])
    for name in ("garbage", "untokenized"):
        shutil.copytree(trained_run, root / name)
    (root / "garbage" / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "untokenized" / "tokenizer.json").unlink()
    train = ["-m", "llmjax.cli.train", f"--config={CONFIGS['llama']}"]
    cases = [  # (argv of the command, the same in this process, its workdir or --out)
        ([*train, f"--workdir={root / 'a'}", "--config.model.num_kv_heads=3"],
         lambda: harness.train("--config.model.num_kv_heads=3", workdir=root / "a"), root / "a"),
        ([*train, f"--workdir={root / 'b'}", "--config.model.num_layers=abc"],
         lambda: harness.train("--config.model.num_layers=abc", workdir=root / "b"), root / "b"),
        ([*train, f"--workdir={root / 'garbage'}", *SOURCE_RUN],
         lambda: harness.train(*SOURCE_RUN, workdir=root / "garbage"), root / "garbage"),
        (["-m", "llmjax.cli.prepare", f"--input={root / 'in'}", f"--out={root / 'out'}", f"--tokenizer={tokenizer_file}",
          "--workers=1"],
         lambda: harness.prepare(PrepareOptions(inputs=(str(root / "in"),), tokenizer=str(tokenizer_file), workers=1),
                                 root / "out"), root / "out"),
        (["-m", "llmjax.cli.sample", f"--workdir={root / 'untokenized'}", "--prompt=def "],
         lambda: harness.run_tokenizer(root / "untokenized"), root / "untokenized"),
    ]
    before = [snapshot(workdir) for _, _, workdir in cases]
    env = train_env(harness.cache, devices=DEVICES)
    processes = [subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for argv, _, _ in cases]
    for (argv, in_process, workdir), process, was in zip(cases, processes, before):
        stderr = process.communicate(timeout=300)[1]
        here = in_process()
        line = assert_one_clear_error(here, [""])
        assert (process.returncode, [line]) == (here.code, [x for x in stderr.splitlines() if x.startswith("error: ")]), \
            f"{' '.join(argv)}\n--- subprocess stderr ---\n{stderr[-3000:]}"
        assert "Traceback" not in stderr
        assert snapshot(workdir) == was


@pytest.mark.parametrize("impl", ["cudnn", "splash"])
def test_an_attention_kernel_the_platform_lacks_is_refused_before_compiling(harness, impl):
    workdir = harness.tmpdir() / "run"
    assert_one_clear_error(harness.train(f"--config.model.attention_impl={impl}", workdir=workdir),
                           ["model.attention_impl"])
    assert not workdir.exists()
