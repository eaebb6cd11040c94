"""What the interop commands and sampling read from a run directory besides its checkpoints.

Every run directory holds `tokenizer.json` (written by llmjax-train, or copied by llmjax-import).
An imported run also keeps `imported.json` (the Hugging Face config.json it came from and the
dtype of its tensors) and its `tokenizer_config.json`, so that exporting it again gives back
the same files: special tokens, dtype and all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer

from llmjax.data.tokenizer import BOS, EOS, PAD, special_id
from llmjax.interop.llama import InteropError
from llmjax.workdir import IMPORTED

TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def load_tokenizer(workdir: Path) -> Tokenizer:
    path = Path(workdir) / TOKENIZER
    if not path.exists():
        raise InteropError(f"{workdir} has no {TOKENIZER}; runs write it when training starts "
                           f"(rerun llmjax-train on this workdir with a newer llmjax to add it).")
    return Tokenizer.from_file(str(path))


def imported(workdir: Path) -> dict | None:
    """{"source": HF directory, "config": its config.json, "dtype": its tensors' dtype}, or None
    for a run trained by llmjax."""
    path = Path(workdir) / IMPORTED
    return json.loads(path.read_text()) if path.exists() else None


def write_imported(workdir: Path, source: Path, hf_config: dict, dtype: str) -> None:
    record = {"source": str(source), "config": hf_config, "dtype": dtype}
    (Path(workdir) / IMPORTED).write_text(json.dumps(record, indent=2))


def special_ids(workdir: Path) -> dict:
    """bos/eos/pad token ids: the imported model's own, or llmjax's tokenizer specials."""
    record = imported(workdir)
    if record is not None:
        return {key: record["config"].get(key) for key in SPECIAL_KEYS}
    tokenizer = load_tokenizer(workdir)
    return {key: special_id(tokenizer, token) for key, token in zip(SPECIAL_KEYS, (BOS, EOS, PAD))}


def eos_ids(workdir: Path) -> list[int]:
    """Token ids that end a generation (HF allows a list for eos_token_id)."""
    eos = special_ids(workdir)["eos_token_id"]
    return [] if eos is None else list(eos) if isinstance(eos, list) else [eos]


def write_hf_tokenizer(workdir: Path, out: Path) -> None:
    """tokenizer.json plus a tokenizer_config.json that `AutoTokenizer` loads offline."""
    workdir = Path(workdir)
    load_tokenizer(workdir)  # Fails clearly when missing.
    shutil.copyfile(workdir / TOKENIZER, out / TOKENIZER)
    if (workdir / TOKENIZER_CONFIG).exists():
        shutil.copyfile(workdir / TOKENIZER_CONFIG, out / TOKENIZER_CONFIG)
        return
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
              "pad_token": PAD, "add_bos_token": False, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30}
    (out / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2))


def copy_hf_tokenizer(hf_dir: Path, workdir: Path) -> None:
    """Takes an HF model directory's fast tokenizer (and its config, if any) into a run."""
    for name in (TOKENIZER, TOKENIZER_CONFIG):
        if (Path(hf_dir) / name).exists():
            shutil.copyfile(Path(hf_dir) / name, Path(workdir) / name)
