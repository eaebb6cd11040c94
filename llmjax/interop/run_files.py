"""The Hugging Face side of a run directory's files: special token ids, and the tokenizer files
an export carries or an import brings (`llmjax.rundir.RunDir` owns the files themselves).

An imported run keeps `imported.json` (the Hugging Face config.json it came from and the dtype
of its tensors) and its `tokenizer_config.json`, so that exporting it again gives back the same
files: special tokens, dtype and all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmjax.data.tokenizer import BOS, EOS, MASK, PAD
from llmjax.rundir import TOKENIZER, TOKENIZER_CONFIG, RunDir

SPECIAL_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _token_text(value) -> str | None:
    """A tokenizer_config special token: a string, or an AddedToken dict with its content."""
    return value.get("content") if isinstance(value, dict) else value


def special_ids(run: RunDir) -> dict:
    """bos/eos/pad token ids: the imported model's own; else those the tokenizer config names,
    or llmjax's specials, looked up in the run's tokenizer (None where it has no such token)."""
    if run.imported is not None:
        return {key: run.imported["config"].get(key) for key in SPECIAL_KEYS}
    texts = (_token_text(run.tokenizer_config.get(f"{name}_token")) or default
             for name, default in (("bos", BOS), ("eos", EOS), ("pad", PAD)))
    return {key: run.tokenizer.token_to_id(text) for key, text in zip(SPECIAL_KEYS, texts)}


def eos_ids(run: RunDir) -> list[int]:
    """Token ids that end a generation (HF allows a list for eos_token_id)."""
    eos = special_ids(run)["eos_token_id"]
    return [] if eos is None else list(eos) if isinstance(eos, list) else [eos]


def decoder_start_id(run: RunDir) -> int:
    """The token an encoder-decoder's decoder starts from: the imported model's own, else
    padding (T5's choice, which llmjax's span corruption makes too), else end-of-document."""
    if run.imported is not None and run.imported["config"].get("decoder_start_token_id") is not None:
        return run.imported["config"]["decoder_start_token_id"]
    ids = special_ids(run)
    return next(i for i in (ids["pad_token_id"], ids["eos_token_id"]) if i is not None)


def write_hf_tokenizer(run: RunDir, out: Path) -> None:
    """tokenizer.json plus a tokenizer_config.json that `AutoTokenizer` loads offline."""
    run.tokenizer  # noqa: B018 - fails clearly when missing.
    shutil.copyfile(run.path / TOKENIZER, out / TOKENIZER)
    config = run.tokenizer_config or {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
        "pad_token": PAD, "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30}
    if not run.tokenizer_config and run.tokenizer.token_to_id(MASK) is not None:  # Trained for MLM.
        config["mask_token"] = MASK
    (out / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2))


def copy_hf_tokenizer(hf_dir: Path, workdir: Path) -> None:
    """Takes an HF model directory's fast tokenizer (and its config, if any) into a run."""
    for name in (TOKENIZER, TOKENIZER_CONFIG):
        if (Path(hf_dir) / name).exists():
            shutil.copyfile(Path(hf_dir) / name, Path(workdir) / name)
