"""What the interop commands and sampling read from a run directory besides its checkpoints.

Every run directory holds `tokenizer.json` (written by llmjax-train, or copied by llmjax-import).
An imported run also keeps `imported.json` (the Hugging Face config.json it came from and the
dtype of its tensors) and its `tokenizer_config.json`, so that exporting it again gives back
the same files: special tokens, dtype and all. A run continued from an import finds the
tokenizer config beside its `data.tokenizer`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer

from llmjax.data.tokenizer import BOS, EOS, PAD
from llmjax.interop.llama import InteropError
from llmjax.workdir import IMPORTED, read_config

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


def tokenizer_config(workdir: Path) -> dict:
    """The HF tokenizer_config.json that goes with the run's tokenizer: the run's own (an
    import), or the one beside `data.tokenizer` (a run continued from an import); {} for a
    tokenizer llmjax trained."""
    tokenizer_file = read_config(workdir).data.tokenizer
    for directory in (Path(workdir), *([Path(tokenizer_file).parent] if tokenizer_file else [])):
        if (directory / TOKENIZER_CONFIG).exists():
            return json.loads((directory / TOKENIZER_CONFIG).read_text())
    return {}


def _token_text(value) -> str | None:
    """A tokenizer_config special token: a string, or an AddedToken dict with its content."""
    return value.get("content") if isinstance(value, dict) else value


def special_ids(workdir: Path) -> dict:
    """bos/eos/pad token ids: the imported model's own; else those the tokenizer config names,
    or llmjax's specials, looked up in the run's tokenizer (None where it has no such token)."""
    record = imported(workdir)
    if record is not None:
        return {key: record["config"].get(key) for key in SPECIAL_KEYS}
    tokenizer, config = load_tokenizer(workdir), tokenizer_config(workdir)
    texts = (_token_text(config.get(f"{name}_token")) or default
             for name, default in (("bos", BOS), ("eos", EOS), ("pad", PAD)))
    return {key: tokenizer.token_to_id(text) for key, text in zip(SPECIAL_KEYS, texts)}


def eos_ids(workdir: Path) -> list[int]:
    """Token ids that end a generation (HF allows a list for eos_token_id)."""
    eos = special_ids(workdir)["eos_token_id"]
    return [] if eos is None else list(eos) if isinstance(eos, list) else [eos]


def write_hf_tokenizer(workdir: Path, out: Path) -> None:
    """tokenizer.json plus a tokenizer_config.json that `AutoTokenizer` loads offline."""
    load_tokenizer(workdir)  # Fails clearly when missing.
    shutil.copyfile(Path(workdir) / TOKENIZER, out / TOKENIZER)
    config = tokenizer_config(workdir) or {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
        "pad_token": PAD, "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30}
    (out / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2))


def copy_hf_tokenizer(hf_dir: Path, workdir: Path) -> None:
    """Takes an HF model directory's fast tokenizer (and its config, if any) into a run."""
    for name in (TOKENIZER, TOKENIZER_CONFIG):
        if (Path(hf_dir) / name).exists():
            shutil.copyfile(Path(hf_dir) / name, Path(workdir) / name)
