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

from llmjax.data.tokenizer import BOS, EOS, EOS_NAMES, MASK_NAMES, PAD
from llmjax.rundir import TOKENIZER, TOKENIZER_CONFIG, RunDir

SPECIAL_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _token_text(value) -> str | None:
    """A tokenizer_config special token: a string, or an AddedToken dict with its content."""
    return value.get("content") if isinstance(value, dict) else value


def special_ids(run: RunDir) -> dict:
    """bos/eos/pad token ids: the imported model's own; else those the tokenizer config names,
    or llmjax's specials, looked up in the run's tokenizer (None where it has no such token).
    Without a named one, the end of document is the token the run's data was split at."""
    if run.imported is not None:
        return {key: run.imported["config"].get(key) for key in SPECIAL_KEYS}
    named = run.tokenizer_config
    texts = (_token_text(named.get(f"{name}_token")) or default
             for name, default in (("bos", BOS), ("eos", EOS), ("pad", PAD)))
    ids = {key: run.tokenizer.token_to_id(text) for key, text in zip(SPECIAL_KEYS, texts)}
    if not named.get("eos_token"):
        eos = run.config.data.eos_id
        ids["eos_token_id"] = eos if eos >= 0 else next(
            (i for i in map(run.tokenizer.token_to_id, EOS_NAMES) if i is not None), None)
    return ids


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
    config = run.tokenizer_config or tokenizer_config(run.tokenizer, special_ids(run))
    (out / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2))


def tokenizer_config(tokenizer, ids: dict) -> dict:
    """A tokenizer_config.json naming the tokens of `ids` (bos/eos/pad_token_id; None or absent
    where there is none), and the mask token of a tokenizer trained for MLM."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30}
    for key in SPECIAL_KEYS:
        token = ids.get(key)
        token = token[0] if isinstance(token, list) and token else token
        if isinstance(token, int) and tokenizer.id_to_token(token) is not None:
            config[key.removesuffix("_id")] = tokenizer.id_to_token(token)
    mask = next((name for name in MASK_NAMES if tokenizer.token_to_id(name) is not None), None)
    if mask is not None:
        config["mask_token"] = mask
    return config


def copy_hf_tokenizer(hf_dir: Path, workdir: Path, ids: dict) -> None:
    """Takes an HF model directory's fast tokenizer and its config into a run; without a config
    there, writes one naming the model's special tokens (`ids`: its config.json's
    bos/eos/pad_token_id), so that runs trained from it and exports name them too."""
    shutil.copyfile(Path(hf_dir) / TOKENIZER, Path(workdir) / TOKENIZER)
    if (Path(hf_dir) / TOKENIZER_CONFIG).exists():
        shutil.copyfile(Path(hf_dir) / TOKENIZER_CONFIG, Path(workdir) / TOKENIZER_CONFIG)
    else:
        from tokenizers import Tokenizer  # noqa: PLC0415

        config = tokenizer_config(Tokenizer.from_file(str(Path(workdir) / TOKENIZER)), ids)
        (Path(workdir) / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2))
