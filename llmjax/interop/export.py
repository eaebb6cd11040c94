"""llmjax run -> Hugging Face `LlamaForCausalLM` directory (config.json, safetensors, tokenizer).

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

from llmjax.checkpoint import resolve_step, restore_params
from llmjax.interop.llama import InteropError, hf_config, tensor_maps
from llmjax.interop.safetensors_io import write_safetensors
from llmjax.interop.run_files import imported, load_tokenizer, special_ids, write_hf_tokenizer
from llmjax.workdir import read_config

MARKER = "llmjax_export.json"  # What an export directory was made from, to recognise a rerun.
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}


def default_dtype(workdir: Path, config) -> str:
    """An imported run exports in the dtype it came in (so the round trip is exact); a trained
    one in its parameter dtype."""
    record = imported(workdir)
    return record["dtype"] if record else config.model.param_dtype


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
    workdir, out = Path(workdir).resolve(), Path(out).resolve()
    config = read_config(workdir)
    step = resolve_step(workdir, step)
    dtype = dtype or default_dtype(workdir, config)
    if dtype not in DTYPES:
        raise InteropError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}.")
    load_tokenizer(workdir)
    marker = {"workdir": str(workdir), "step": step, "dtype": dtype}
    check_out(out, marker)

    params = restore_params(workdir, config, step)
    maps = tensor_maps(config.model)
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    sizes = [(m.hf_name, int(np.prod(m.hf_shape)) * itemsize) for m in maps]
    tensors = ((m.hf_name, m.to_hf(_leaf(params, m.path, m.layer)).astype(DTYPES[dtype])) for m in maps)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = write_safetensors(tmp, tensors, sizes, max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(
            hf_config(config.model, dtype, special_ids(workdir)), indent=2))
        write_hf_tokenizer(workdir, tmp)
        (tmp / MARKER).write_text(json.dumps(marker))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {workdir} step {step} ({dtype}) to {out}: {', '.join(files)}")
    return out
