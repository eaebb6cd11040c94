"""Every test process sees 8 fake CPU devices, so sharded code runs for real in unit tests.
The flag must be set before JAX is imported, which is why it lives here."""

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from llmjax import cpu_runtime  # noqa: E402

cpu_runtime.configure()  # What every llmjax command does: tests run the same XLA:CPU settings.

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

from llmjax import flops, model  # noqa: E402
from llmjax.config import default_config  # noqa: E402

import stray_processes  # noqa: E402


FAMILIES = ("llama", "gpt2", "lstm", "bert", "t5")  # Every family: property tests run over all of them.
DECODERS = ("llama", "gpt2", "lstm")  # Those that generate (cached decoding, beam search).
TRANSFORMERS = ("llama", "gpt2", "bert", "t5")  # Those with attention heads (and tensor/sequence sharding).
# The same tiny shape in each family's own fields.
_TINY = {"llama": dict(num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64),
         "gpt2": dict(num_heads=4, head_dim=8, mlp_dim=64),
         "lstm": dict(hidden_dim=32),
         "bert": dict(num_heads=4, head_dim=8, mlp_dim=64),
         "t5": dict(num_heads=4, head_dim=8, mlp_dim=64, relative_buckets=8, relative_max_distance=12)}


# Mixture-of-experts variants of the tiny Llama, named like families here: Mixtral's choices
# (every layer, dropless, renormalised top-2 of 4), and all the others at once (every other
# layer, a capacity that drops, a shared expert, top-k of the softmax).
MOE = {"moe": dict(num_experts=4, experts_per_token=2, expert_mlp_dim=32),
       "moe-capacity": dict(num_experts=4, experts_per_token=2, expert_mlp_dim=32, moe_every=2,
                            capacity_factor=1.0, shared_experts=1, router="softmax_topk")}


def make_tiny_config(family="llama", **model_overrides):
    """A 2-layer fp32 model small enough that a step costs milliseconds; `family` may be an
    MoE variant's name (MOE)."""
    model_overrides = MOE.get(family, {}) | model_overrides
    family = "llama" if family in MOE else family
    c = default_config(family)
    c.model.update(vocab_size=128, d_model=32, num_layers=2, max_seq_len=32, dtype="float32", **_TINY[family])
    c.model.update(**model_overrides)
    c.data.update(seq_len=16)
    if family == "t5":
        c.objective.targets_length = 8  # Span corruption needs 5; 8 splits over a sequence axis of 4.
    c.train.update(steps=10, global_batch_size=8, log_every=5, eval_every=0, eval_batches=1)
    c.optimizer.update(warmup_steps=2, learning_rate=1e-2)
    return c


def init_params(config, seed=0):
    """`config`'s model parameters, unboxed (`model.init` compiles itself on a concrete key)."""
    return nn.unbox(model.init(jax.random.key(seed), config))


def unstack_layers(params, num_layers):
    """Scanned params [layers, ...] -> per-layer subtrees layers_0, layers_1, ..."""
    unrolled = {k: v for k, v in params.items() if k != "layers"}
    for i in range(num_layers):
        unrolled[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return unrolled


@pytest.fixture
def tiny_config():
    return make_tiny_config()


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert jax.device_count() == 8, "tests expect 8 fake CPU devices (see conftest.py)"


stray_processes.adopt_orphans()


@pytest.fixture(autouse=True)
def _nothing_left_running():
    """Fails a test that leaves a process running, after killing it (tests/stray_processes.py)."""
    yield
    left = stray_processes.survivors()
    stray_processes.kill(left)
    if left:
        pytest.fail("the test left processes running (killed now): " +
                    "; ".join(f"{pid}: {command[:200]}" for pid, command in left.items()), pytrace=False)


ROOT = Path(__file__).resolve().parents[1]
# Shared by every training subprocess of the session: each distinct step compiles once.
XLA_CACHE = Path(tempfile.gettempdir()) / f"llmjax-test-xla-{os.getuid()}"


def train_command(workdir, *overrides, config="configs/tiny.py"):
    return [sys.executable, "-m", "llmjax.cli.train", f"--config={config}", f"--workdir={workdir}",
            *overrides]


# XLA:CPU cannot serialize an executable that calls oneDNN (llmjax/cpu_runtime.py): with its
# custom calls on, every training subprocess would compile its steps afresh (4 of a tiny run's
# 10 s). The tests that start such processes check what a run does (resume, launch, sweeps,
# export), which no matmul kernel changes, so they run the cacheable setting that
# cpu_runtime.py documents and share XLA_CACHE. The in-process tests, and the fault campaign's
# restarted jobs (tests/test_faults.py), keep a user's settings, oneDNN included.
CACHEABLE_XLA_FLAGS = "--xla_cpu_experimental_onednn_custom_call=false"


# The matmul peaks that MFU is reported against (llmjax.flops), measured once for the session:
# a measurement takes at least 2 s, and every training subprocess with a fresh cache would
# spend them again.
PEAK_CACHE = Path(tempfile.gettempdir()) / f"llmjax-test-peak-{os.getuid()}"


def with_measured_peaks(cache):
    """`cache` (a run's LLMJAX_CACHE), holding this session's measured peaks; measured by the
    first xdist worker to ask, under a lock, and read by the others."""
    target = Path(cache) / "peak_flops.json"
    if not target.exists():
        with open(f"{PEAK_CACHE}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for dtype in ("bfloat16", "float32"):  # The tiny configs' and the fp32 tests'.
                flops.host_peak_flops(PEAK_CACHE, dtype)
            fcntl.flock(lock, fcntl.LOCK_UN)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PEAK_CACHE / "peak_flops.json", target)
    return cache


def untouched(cache) -> bool:
    """Whether a run left `cache` as `train_env` made it: nothing but the peaks."""
    return {p.name for p in Path(cache).iterdir()} <= {"peak_flops.json"} if Path(cache).exists() else True


def train_env(cache, devices=1):
    return dict(os.environ, LLMJAX_CACHE=str(with_measured_peaks(cache)), JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=str(XLA_CACHE),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {CACHEABLE_XLA_FLAGS}")


def run_train(workdir, *overrides, cache, config="configs/tiny.py", devices=1):
    """Runs `llmjax-train` to completion in a subprocess, as a user would."""
    return subprocess.run(train_command(workdir, *overrides, config=config), cwd=ROOT,
                          env=train_env(cache, devices), capture_output=True, text=True, timeout=600)


REFERENCE_PYTHON = ROOT / ".venv-ref" / "bin" / "python"


@pytest.fixture(scope="session")
def reference_python(tmp_path_factory):
    """.venv-ref's interpreter (torch + transformers), created on first use by
    scripts/setup_reference_env.sh. A file lock keeps pytest-xdist workers from building it
    twice at once; the script itself reuses a working environment."""
    with open(ROOT / ".venv-ref.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(["bash", str(ROOT / "scripts" / "setup_reference_env.sh")],
                                capture_output=True, text=True, timeout=1800)
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert result.returncode == 0, f"could not create .venv-ref:\n{result.stderr[-3000:]}"
    return REFERENCE_PYTHON


def run_reference(python, *args):
    """Runs tests/hf_reference.py under the reference environment."""
    result = subprocess.run([str(python), str(ROOT / "tests" / "hf_reference.py"), *map(str, args)],
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
