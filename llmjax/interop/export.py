"""llmjax run -> Hugging Face model directory (`LlamaForCausalLM`, `GPT2LMHeadModel`, ...: config.json,
safetensors, tokenizer), through the family's adapter.

The directory is assembled under a temporary name beside `out` and renamed into place when
complete, so an interrupted export never leaves a half-written model that loads.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from llmjax.checkpoint import restore_params
from llmjax.interop import adapters
from llmjax.interop.tensor_map import InteropError
from llmjax.interop.safetensors_io import write_safetensors
from llmjax.interop.run_files import special_ids, write_hf_tokenizer
from llmjax.rundir import RunDir

MARKER = "llmjax_export.json"  # What an export directory was made from, to recognise a rerun.
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}


def default_dtype(run: RunDir) -> str:
    """An imported run exports in the dtype it came in (so the round trip is exact); a trained
    one in its parameter dtype."""
    return run.imported["dtype"] if run.imported else run.config.model.param_dtype


def check_out(out: Path, marker: dict) -> None:
    """Refuses a non-empty --out unless it holds the same export (which is then replaced)."""
    if out.exists() and not out.is_dir():
        raise InteropError(f"--out {out} exists and is not a directory; choose another path.")
    if out.is_dir() and any(out.iterdir()):
        previous = out / MARKER
        if not previous.exists() or json.loads(previous.read_text()) != marker:
            raise InteropError(f"--out {out} is not empty and does not hold this export; choose a "
                               f"new directory or remove it.")


def _leaf(params: dict, path: tuple[str, ...], layer: int | None) -> np.ndarray:
    for key in path:
        params = params[key]
    return params if layer is None else params[layer]


def export_hf(workdir: Path, out: Path, step: int | None = None, dtype: str | None = None,
              max_shard_bytes: int = 5 * 10**9, log=print) -> Path:
    """Writes the HF directory for the run's checkpoint of `step` (default: the latest)."""
    run, out = RunDir(workdir), Path(out).resolve()
    config = run.config
    step = run.resolve_step(step)
    dtype = dtype or default_dtype(run)
    if dtype not in DTYPES:
        raise InteropError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}.")
    adapter = adapters.for_config(config)
    run.tokenizer  # noqa: B018 - refused now, before the checkpoint is read, when missing.
    marker = {"workdir": str(run.path), "step": step, "dtype": dtype}
    check_out(out, marker)

    params = restore_params(run.path, config, step)
    maps = adapter.tensor_maps(config.model)
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    sizes = [(m.hf_name, int(np.prod(m.hf_shape)) * itemsize) for m in maps]
    tensors = ((m.hf_name, m.to_hf(_leaf(params, m.path, m.layer)).astype(DTYPES[dtype])) for m in maps)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = write_safetensors(tmp, tensors, sizes, max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(
            adapter.hf_config(config.model, dtype, special_ids(run)), indent=2))
        write_hf_tokenizer(run, tmp)
        (tmp / MARKER).write_text(json.dumps(marker))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {run.path} step {step} ({dtype}) to {out}: {', '.join(files)}")
    return out
