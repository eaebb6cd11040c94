"""Hugging Face model directory -> llmjax run directory (config, tokenizer, step-0 checkpoint),
through the adapter of the family whose MODEL_TYPE the HF config names.

Conversion streams: each HF tensor is read alone (`safe_open`), written in llmjax's layout into
a memory-mapped staging file of its leaf (scanned layers stack into one leaf), and dropped;
Orbax then writes the checkpoint from those maps chunk by chunk (`save_host_params`). Host
memory stays near the largest single tensor, not the model. Every check that can fail (config,
tensor names, shapes, dtypes, tokenizer) runs on the file headers before anything is written,
and the run directory is assembled under a temporary name and renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from llmjax.checkpoint import Checkpointer, metadata, save_host_params
from llmjax.config import default_config
from llmjax.interop import adapters
from llmjax.interop.tensor_map import InteropError, TensorMap
from llmjax.data.tokenizer import TextTokenizer
from llmjax.data.jsonfile import read_json_object
from llmjax.interop.run_files import SPECIAL_KEYS, copy_hf_tokenizer
from llmjax.interop.safetensors_io import SafetensorsReader
from llmjax.rundir import TOKENIZER, RunDir

SUPPORTED_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def check_tensors(reader: SafetensorsReader, maps: list[TensorMap], optional: tuple[str, ...],
                  family: str) -> str:
    """Every expected tensor present with its shape, nothing unexpected (but the adapter's
    `optional` names, by suffix); returns their dtype."""
    expected = {m.hf_name for m in maps}
    extra = {n for n in reader.names() - expected if not n.endswith(optional)}
    if extra:
        raise InteropError(f"tensor {sorted(extra)[0]} is not part of a {family} model with this "
                           f"config.json ({len(extra)} unexpected tensors in all).")
    dtypes = set()
    for m in maps:
        if m.hf_name not in reader.names():
            raise InteropError(f"tensor {m.hf_name} is missing from the checkpoint.")
        shape, dtype = reader.header(m.hf_name)
        if shape != m.hf_shape:
            raise InteropError(f"tensor {m.hf_name}: shape {shape} does not match {m.hf_shape} "
                               f"expected from config.json.")
        if dtype not in SUPPORTED_DTYPES:
            raise InteropError(f"tensor {m.hf_name}: dtype {dtype} is not a float type llmjax reads "
                               f"({', '.join(SUPPORTED_DTYPES)}).")
        dtypes.add(SUPPORTED_DTYPES[dtype])
    if len(dtypes) > 1:
        raise InteropError(f"the checkpoint mixes dtypes {sorted(dtypes)}; save it in one dtype.")
    return dtypes.pop()


def _base_model_names(reader: SafetensorsReader, maps: list[TensorMap], prefix: str) -> list[TensorMap]:
    """A checkpoint saved from the base model names its tensors without the LM head model's
    prefix; transformers loads either, and so does llmjax."""
    if not prefix or any(name.startswith(prefix) for name in reader.names()):
        return maps
    return [dataclasses.replace(m, hf_name=m.hf_name.removeprefix(prefix)) for m in maps]


def import_config(hf: dict, workdir: Path, adapter):
    """The llmjax config of the imported model: defaults plus the HF model's shape, data
    tokenized with its tokenizer (copied into `workdir`) and split at its EOS; parameters are
    stored in float32 for continued training whatever the source dtype."""
    model = adapter.model_overrides(hf)
    config = default_config(model["family"])
    config.model.update(**model)
    config.model.param_dtype = "float32"
    eos = hf.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    config.data.update(tokenizer=str(workdir / TOKENIZER), eos_id=-1 if eos is None else eos,
                       seq_len=min(config.data.seq_len, config.model.max_seq_len))
    return config


def check_tokenizer(path: Path, config) -> TextTokenizer | None:
    """Refuses, before anything is written, a tokenizer that cannot be read or that has ids
    beyond the model's embedding (they would index no row); returns it with the model's end of
    document when config.json names one."""
    tokenizer = TextTokenizer(path, config.data.eos_id) if config.data.eos_id >= 0 else None
    size = tokenizer.vocab_size if tokenizer else hf_tokenizer_size(path)
    if size > config.model.vocab_size:
        raise InteropError(f"{path} has {size:,} tokens, more than the model's {config.model.vocab_size:,} "
                           f"embeddings: ids from {config.model.vocab_size} up would index no row. Give the "
                           f"tokenizer this model was trained with.")
    return tokenizer


def hf_tokenizer_size(path: Path) -> int:
    from tokenizers import Tokenizer  # noqa: PLC0415

    try:
        return Tokenizer.from_file(str(path)).get_vocab_size()
    except Exception as error:  # noqa: BLE001 - the tokenizers library raises bare Exceptions.
        raise InteropError(f"{path} cannot be read ({' '.join(str(error).split())[:160]}); it is damaged "
                           f"or not a tokenizer.json: save it again with save_pretrained.") from None


def _stage(reader: SafetensorsReader, maps: list[TensorMap], num_layers: int, staging: Path) -> dict:
    """The params tree as read-only memory maps, filled one HF tensor at a time."""
    leaves = {}
    for m in maps:
        if m.path not in leaves:
            leaves[m.path] = np.lib.format.open_memmap(staging / f"{'.'.join(m.path)}.npy", mode="w+",
                                                       dtype=np.float32, shape=m.leaf_shape(num_layers))
        m.copy_to_llmjax(reader.read(m.hf_name), leaves[m.path][m.index()])
    tree = {}
    for path, leaf in leaves.items():
        leaf.flush()
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.load(leaf.filename, mmap_mode="r")
    return tree


def import_hf(hf_dir: Path, workdir: Path, log=print) -> Path:
    """Creates `workdir` holding the HF model as an llmjax run (checkpoint step 0)."""
    hf_dir, workdir = Path(hf_dir).resolve(), Path(workdir).resolve()
    if not (hf_dir / "config.json").exists():
        raise InteropError(f"--hf {hf_dir}: no config.json; give a directory written by "
                           f"save_pretrained.")
    hf = read_json_object(hf_dir / "config.json", InteropError, "give the config.json that save_pretrained wrote.")
    adapter = adapters.for_hf_config(hf)
    config = import_config(hf, workdir, adapter)
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise InteropError(f"--workdir {workdir} already exists and is not empty; import into a "
                           f"new directory.")
    if not (hf_dir / TOKENIZER).exists():
        raise InteropError(f"--hf {hf_dir}: no {TOKENIZER}; llmjax needs the fast tokenizer file "
                           f"to train and sample. Save it there with AutoTokenizer.from_pretrained"
                           f"(...).save_pretrained(DIR).")
    tokenizer = check_tokenizer(hf_dir / TOKENIZER, config)
    reader = SafetensorsReader(hf_dir)
    maps = _base_model_names(reader, adapter.tensor_maps(config.model),
                             getattr(adapter, "BASE_MODEL_PREFIX", ""))
    dtype = check_tensors(reader, maps, adapter.OPTIONAL_TENSORS, config.model.family)

    start = time.perf_counter()
    workdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{workdir.name}.tmp-", dir=workdir.parent))
    try:
        staging = tmp / "staging"
        staging.mkdir()
        params = _stage(reader, maps, config.model.num_layers, staging)
        meta = metadata(0, 0, float("nan"), config, start) | {"imported_from": str(hf_dir)}
        staged = RunDir(tmp)
        save_host_params(staged.checkpoints, 0, params, meta)
        del params
        shutil.rmtree(staging)
        imported = Checkpointer(staged.checkpoints, config)
        imported.adopt(0)
        imported.close()  # Records its integrity manifest.
        staged.write_config(config)
        copy_hf_tokenizer(hf_dir, tmp, {key: hf.get(key) for key in SPECIAL_KEYS})
        if tokenizer is not None:  # The model's own end of document, which its name may not say.
            tokenizer.save(tmp)
        staged.write_imported(hf_dir, hf, dtype)
        if workdir.exists():
            workdir.rmdir()
        tmp.rename(workdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"imported {hf_dir} ({len(maps)} tensors, {dtype}) into {workdir} as checkpoint step 0 "
        f"in {time.perf_counter() - start:.1f}s")
    return workdir
