"""llmjax run -> Hugging Face model directory (`LlamaForCausalLM`, `GPT2LMHeadModel`, ...: config.json,
safetensors, tokenizer), through the family's adapter.

A fine-tuning run exports the model it applies (`llmjax.finetune.params.backbone`: LoRA
adapters merged into their kernels; a task head is not exported). A LoRA run's export also
holds what PEFT loads: `adapter/`, the adapters in PEFT's format (`llmjax.interop.peft_export`),
and `base/`, the model they adapt as its own HF directory. With LoRA every weight of the model
stays as pretrained, so `base/` is the `checkpoint.init_from` run's model, bit for bit; it is
written here (not left to a separate export of that run) so that the adapter ships with the
exact weights it was trained against, and `adapter_config.json` names it
(base_model_name_or_path: the absolute path of `base/`, for `AutoPeftModelFor*`; move the export
and pass the base yourself).

The directory is assembled under a temporary name beside `out` and renamed into place when
complete, so an interrupted export never leaves a half-written model that loads.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.checkpoint import restore_params
from llmjax.finetune.params import backbone, model_part
from llmjax.interop import adapters, peft_export
from llmjax.interop.tensor_map import InteropError
from llmjax.interop.safetensors_io import write_safetensors
from llmjax.interop.run_files import special_ids, write_hf_tokenizer
from llmjax.rundir import TOKENIZER, TOKENIZER_CONFIG, RunDir
from llmjax.train import objectives

MARKER = "llmjax_export.json"  # What an export directory was made from, to recognise a rerun.
ADAPTER, BASE = "adapter", "base"  # A LoRA run's PEFT adapter and the model it adapts (subdirectories).
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}


def default_dtype(run: RunDir) -> str:
    """An imported run exports in the dtype it came in (so the round trip is exact); a trained
    one in its parameter dtype."""
    return run.imported["dtype"] if run.imported else run.config.model.param_dtype


def check_out(out: Path, marker: dict) -> None:
    """Refuses a non-empty --out unless it holds the same export and nothing else (the export
    is then replaced whole; what a user added there, a model card or results, is never deleted)."""
    if out.exists() and not out.is_dir():
        raise InteropError(f"--out {out} exists and is not a directory; choose another path.")
    if out.is_dir() and any(out.iterdir()):
        previous = out / MARKER
        try:
            saved = json.loads(previous.read_text()) if previous.exists() else {}
        except ValueError:  # A damaged marker holds no export.
            saved = {}
        if not isinstance(saved, dict) or {key: saved.get(key) for key in marker} != marker:
            raise InteropError(f"--out {out} is not empty and does not hold this export; choose a "
                               f"new directory or remove it.")
        listed = saved.get("files")
        ours = {MARKER} | (set(listed) if isinstance(listed, list)
                           else {p.name for p in out.iterdir() if _written_by_export(p.name)})
        if others := sorted(p.name for p in out.iterdir() if p.name not in ours):
            raise InteropError(f"--out {out} holds this export and also {', '.join(others[:5])}, which the "
                               f"export did not write; replacing the export would delete them. Move them "
                               f"out, or export to a new directory.")


def _written_by_export(name: str) -> bool:
    """Names an export writes, for a directory exported before the marker listed its files."""
    return name in ("config.json", "generation_config.json", TOKENIZER, TOKENIZER_CONFIG, BASE, ADAPTER) or \
        (name.startswith("model") and ".safetensors" in name)


def _leaf(params: dict, path: tuple[str, ...], index: tuple[int, ...]) -> np.ndarray:
    for key in path:
        params = params[key]
    return params[index]


def write_model(directory: Path, model_params: dict, maps: list, hf_config: dict, run: RunDir, dtype: str,
                max_shard_bytes: int) -> list[str]:
    """One HF model directory (safetensors, config.json, tokenizer) of `model_params`; returns
    the safetensors file names."""
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    sizes = [(m.hf_name, int(np.prod(m.hf_shape)) * itemsize) for m in maps]
    tensors = ((m.hf_name, m.to_hf(_leaf(model_params, m.path, m.index())).astype(DTYPES[dtype])) for m in maps)
    files = write_safetensors(directory, tensors, sizes, max_shard_bytes)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    write_hf_tokenizer(run, directory)
    return files


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

    params = restore_params(run.path, config, step)  # The run's own tree: the model's and any extras.
    maps = adapter.tensor_maps(config.model)
    hf_config = adapter.hf_config(config.model, dtype, special_ids(run))
    written = (maps, hf_config, run, dtype, max_shard_bytes)  # What every model directory of the export shares.

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = write_model(tmp, jax.tree.map(np.asarray, backbone(params, config)), *written)
        if config.finetune.lora_rank:
            (tmp / BASE).mkdir()
            write_model(tmp / BASE, model_part(params), *written)
            peft_export.write_adapter(tmp / ADAPTER, params["lora"], maps, config.finetune, hf_config,
                                      base=str(out / BASE))
            files += [f"{ADAPTER}/", f"{BASE}/"]
        (tmp / MARKER).write_text(json.dumps(marker | {"files": sorted(p.name for p in tmp.iterdir())}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if "task_head" in params:
        log(f"note: {run.path}'s task head is not exported (the export is the model without it)")
    if objectives.of(config).prompt_is_prefix:
        log(f"note: {run.path} was trained as a prefix LM; transformers reads a prompt causally, so its "
            f"logits differ from llmjax-sample's, which reads the prompt as the prefix")
    log(f"exported {run.path} step {step} ({dtype}) to {out}: {', '.join(files)}")
    return out
