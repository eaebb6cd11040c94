"""Peak host memory of `llmjax-import` against the size of the model it converts.

    .venv/bin/python scripts/bench_import.py [--vocab 32000 --d_model 1024 --layers 8 --mlp 2816]

Writes a random Llama checkpoint (safetensors, sharded like the hub's) to a temporary
directory, then imports it in a fresh process that samples its own memory every 5 ms. Prints
the model size, its largest tensor, and the import's peak anonymous memory (heap: what the
conversion itself holds) above the process's baseline, plus the peak resident set including
file-backed pages (the staging memory maps and safetensors files, page cache the kernel can
drop at any time).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from absl import app, flags

_VOCAB = flags.DEFINE_integer("vocab", 32000, "Vocabulary size.")
_D_MODEL = flags.DEFINE_integer("d_model", 1024, "Hidden size.")
_LAYERS = flags.DEFINE_integer("layers", 8, "Decoder layers.")
_MLP = flags.DEFINE_integer("mlp", 2816, "MLP hidden size.")
_HEADS = flags.DEFINE_integer("heads", 16, "Attention heads (key/value heads: a quarter).")
_MEASURE = flags.DEFINE_multi_string("measure", None, "Internal: HF_DIR RUN_DIR to import and measure.")

MB = 2**20


def memory_kb() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def measure(hf_dir: str, run_dir: str) -> None:
    """In the child: import with a sampler thread recording the peak anonymous memory."""
    from llmjax.interop.import_hf import import_hf  # noqa: PLC0415 - imported before the baseline.

    baseline = memory_kb()["RssAnon"]
    peak, running = [baseline], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], memory_kb()["RssAnon"])
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    import_hf(Path(hf_dir), Path(run_dir), log=lambda *_: None)
    seconds = time.perf_counter() - start
    running[0] = False
    sampler.join()
    print(json.dumps({"baseline_anon_kb": baseline, "peak_anon_kb": peak[0],
                      "peak_rss_kb": memory_kb()["VmHWM"], "seconds": seconds}))


def write_checkpoint(directory: Path) -> tuple[int, int]:
    """A random HF Llama in `directory`; returns (model bytes, largest tensor bytes)."""
    from llmjax.config import default_config  # noqa: PLC0415
    from llmjax.data.tokenizer import train_tokenizer  # noqa: PLC0415
    from llmjax.model.llama.hf import hf_config, tensor_maps  # noqa: PLC0415
    from llmjax.interop.safetensors_io import write_safetensors  # noqa: PLC0415

    model = default_config().model
    model.update(vocab_size=_VOCAB.value, d_model=_D_MODEL.value, num_layers=_LAYERS.value,
                 num_heads=_HEADS.value, num_kv_heads=max(1, _HEADS.value // 4),
                 head_dim=_D_MODEL.value // _HEADS.value, mlp_dim=_MLP.value, tie_embeddings=False)
    maps = tensor_maps(model)
    sizes = [(m.hf_name, int(np.prod(m.hf_shape)) * 4) for m in maps]
    rng = np.random.default_rng(0)
    tensors = ((m.hf_name, rng.standard_normal(m.hf_shape, np.float32)) for m in maps)
    directory.mkdir()
    write_safetensors(directory, tensors, sizes, max_shard_bytes=200 * 10**6)
    config = hf_config(model, "float32", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    (directory / "config.json").write_text(json.dumps(config))
    train_tokenizer(["def f(x):\n    return x\n"] * 10, 300, directory / "tokenizer.json")
    return sum(size for _, size in sizes), max(size for _, size in sizes)


def main(argv) -> None:
    del argv
    if _MEASURE.value:
        measure(*_MEASURE.value)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_bytes, largest = write_checkpoint(Path(tmp) / "hf")
        result = subprocess.run([sys.executable, __file__, f"--measure={Path(tmp) / 'hf'}",
                                 f"--measure={Path(tmp) / 'run'}"], capture_output=True, text=True,
                                check=True)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
    held = (figures["peak_anon_kb"] - figures["baseline_anon_kb"]) * 1024
    print(f"model: {model_bytes / MB:,.0f} MB in {_LAYERS.value} layers; largest tensor "
          f"{largest / MB:,.0f} MB")
    print(f"import: {figures['seconds']:.1f}s; peak anonymous memory above baseline "
          f"{held / MB:,.0f} MB = {held / model_bytes:.2f} x the model, {held / largest:.2f} x "
          f"the largest tensor")
    print(f"peak resident set incl. file-backed pages and the JAX/Orbax runtime: "
          f"{figures['peak_rss_kb'] / 1024:,.0f} MB (baseline anonymous "
          f"{figures['baseline_anon_kb'] / 1024:,.0f} MB)")


if __name__ == "__main__":
    app.run(main)
