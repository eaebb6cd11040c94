"""Tokenizers: a byte-level BPE trained here, or a local `tokenizer.json` / SentencePiece model.

Nothing is downloaded. Byte-level BPE is the default because every input is representable (no
unknown token, whatever the corpus holds). A tokenizer is identified by a fingerprint of its
file and of the special ids read from it (end of document, padding), so a dataset, a checkpoint
and a model can be checked to agree before training starts: the same file with another
end-of-document id splits documents elsewhere, and is another tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmjax.data.errors import DataError
from llmjax.data.jsonfile import read_json_object

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
# End-of-document tokens of common tokenizers, looked up in a tokenizer.json that llmjax did not
# train; BERT's [SEP] ends its inputs, and its config.json names no eos_token_id.
EOS_NAMES = (EOS, "</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]")
# The token an encoder's classifier reads first (BERT's [CLS]); llmjax's own BERT reads the
# end-of-document token that precedes every document it was pretrained on.
CLS_NAMES = ("[CLS]",)
# The masked-language-model's mask token: llmjax's own, BERT's and RoBERTa's names.
MASK = "<|mask|>"
MASK_NAMES = (MASK, "[MASK]", "<mask>")
HF_FILE, SENTENCEPIECE_FILE = "tokenizer.json", "tokenizer.model"
IDS_FILE = "tokenizer_ids.json"  # Beside a saved tokenizer: the special ids it was used with.


class TokenizerError(DataError):
    """A tokenizer file is missing or unusable; the message says which and what to do."""


class TextTokenizer:
    """The few things llmjax needs of a tokenizer, the same for HF `tokenizers` and SentencePiece."""

    def __init__(self, path: Path, eos_id: int = -1):
        """`eos_id` >= 0 names the end-of-document token (e.g. an imported model's); otherwise
        it is looked up by name."""
        self.path = Path(path)
        if self.path.is_dir():
            inside = [name for name in (HF_FILE, SENTENCEPIECE_FILE) if (self.path / name).is_file()]
            raise TokenizerError(f"tokenizer {self.path} is a directory; give the tokenizer file itself"
                                 + (f", e.g. {self.path / inside[0]}." if inside else
                                    " (a tokenizer.json or a SentencePiece .model)."))
        if not self.path.is_file():
            raise TokenizerError(f"tokenizer file {self.path} does not exist; give a tokenizer.json "
                                 f"or a SentencePiece .model file, or train one with --vocab_size.")
        file_bytes = self.path.read_bytes()
        if self.path.suffix == ".json":
            try:
                self._hf = Tokenizer.from_file(str(self.path))
            except Exception as error:  # noqa: BLE001 - the tokenizers library raises bare Exceptions.
                raise TokenizerError(f"tokenizer file {self.path} cannot be read ({' '.join(str(error).split())}); "
                                     f"it is damaged or not a tokenizer.json: replace it with an intact "
                                     f"copy.") from None
            self._spm = None
            self.vocab_size = self._hf.get_vocab_size()
            self.eos_id = next((i for i in map(self._hf.token_to_id, EOS_NAMES) if i is not None), None)
            self.pad_id = self._hf.token_to_id(PAD)
        else:
            import sentencepiece  # noqa: PLC0415 - only for SentencePiece models.
            try:
                self._spm = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
            except (RuntimeError, OSError) as error:
                raise TokenizerError(f"{self.path} is not a SentencePiece model ({error}).") from None
            self._hf = None
            self.vocab_size = self._spm.get_piece_size()
            self.eos_id = self._spm.eos_id() if self._spm.eos_id() >= 0 else None
            self.pad_id = self._spm.pad_id() if self._spm.pad_id() >= 0 else None
        if eos_id >= 0:
            if eos_id >= self.vocab_size:
                raise TokenizerError(f"end-of-document id {eos_id} is outside tokenizer {self.path} "
                                     f"({self.vocab_size} tokens); give an id below {self.vocab_size}.")
            self.eos_id = eos_id
        if self.eos_id is None:
            raise TokenizerError(f"tokenizer {self.path} has no end-of-document token (looked for "
                                 f"{', '.join(EOS_NAMES)}); documents must be separated by one.")
        ids = json.dumps({"eos_id": self.eos_id, "pad_id": self.pad_id}, sort_keys=True).encode()
        self.fingerprint = hashlib.sha256(file_bytes + b"\0" + ids).hexdigest()[:16]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._hf is not None:
            return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]
        return self._spm.encode(texts)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        return self._hf.decode(ids) if self._hf is not None else self._spm.decode(ids)

    def token_id(self, names: Iterable[str]) -> int | None:
        """The id of the first of `names` the vocabulary has, or None."""
        for name in names:
            i = self._hf.token_to_id(name) if self._hf is not None else self._spm.piece_to_id(name)
            if i is not None and (self._hf is not None or self._spm.id_to_piece(i) == name):
                return int(i)
        return None

    def special_ids(self) -> np.ndarray:
        """Ids of the special tokens (padding, end of document, mask, sentinels, ...): those that
        stand for no text. Objectives never corrupt or predict them as text."""
        if self._spm is not None:
            return np.asarray([i for i in range(self.vocab_size)
                               if self._spm.is_control(i) or self._spm.is_unknown(i)], np.int64)
        return np.asarray(sorted(i for i, t in self._hf.get_added_tokens_decoder().items()
                                 if t.special and i < self.vocab_size), np.int64)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (0 for special tokens): the denominator of bits per
        byte, which compares models whatever their tokenizers."""
        counts = np.zeros(self.vocab_size, np.int64)
        if self._spm is not None:
            for i in range(self.vocab_size):
                if self._spm.is_byte(i):
                    counts[i] = 1
                elif not (self._spm.is_control(i) or self._spm.is_unknown(i)):
                    counts[i] = len(self._spm.id_to_piece(i).replace("\u2581", " ").encode())
            return counts
        special = {i for i, t in self._hf.get_added_tokens_decoder().items() if t.special}
        byte_level = isinstance(self._hf.decoder, decoders.ByteLevel)
        for token, i in self._hf.get_vocab().items():
            if i in special or i >= self.vocab_size:
                continue
            if byte_level:  # Each character of a byte-level token stands for exactly one byte.
                counts[i] = len(token)
            elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
                counts[i] = 1  # SentencePiece-style byte fallback.
            else:
                counts[i] = len(token.replace("\u2581", " ").encode())
        return counts

    def save(self, directory: Path) -> Path:
        """Copies the tokenizer file byte for byte and records its special ids beside it, so
        that its fingerprint travels with it."""
        target = Path(directory) / (HF_FILE if self._hf is not None else SENTENCEPIECE_FILE)
        if target.resolve() != self.path.resolve():
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(self.path, tmp)
            tmp.rename(target)
        ids, tmp = Path(directory) / IDS_FILE, Path(directory) / f"{IDS_FILE}.tmp"
        tmp.write_text(json.dumps({"eos_id": self.eos_id, "pad_id": self.pad_id}))
        tmp.rename(ids)
        return target


_IDS_FIX = "restore it from an intact copy."


def load_from_dir(directory: Path) -> TextTokenizer | None:
    """The tokenizer saved in `directory` with the special ids it was used with (by name when
    no record of them is there), or None when there is none."""
    ids = Path(directory) / IDS_FILE
    eos_id = -1
    if ids.is_file():
        eos_id = read_json_object(ids, TokenizerError, _IDS_FIX, keys=("eos_id",))["eos_id"]
        if not isinstance(eos_id, int) or isinstance(eos_id, bool) or eos_id < 0:
            raise TokenizerError(f"{ids}: eos_id={eos_id!r} is not a token id; {_IDS_FIX}")
    for name in (HF_FILE, SENTENCEPIECE_FILE):
        if (Path(directory) / name).is_file():
            return TextTokenizer(Path(directory) / name, eos_id)
    return None


LONGEST_RUN = 16384  # Characters of one run (no space, or only spaces) the BPE trainer sees whole.


def bounded_runs(texts: Iterable[str], limit: int = LONGEST_RUN) -> Iterator[str]:
    """The texts, with any run of `limit` or more non-space (or space) characters cut into
    pieces of `limit`, each yielded as a text of its own. The BPE trainer's time grows with the
    square of its longest pre-token: one 5 MB line of a single letter ran for hours. Ordinary
    text (the stdlib corpus has no run of even 256) passes through unchanged."""
    for text in texts:
        if len(text) < limit or (max(map(len, text.split()), default=0) < limit
                                 and " " * limit not in text and "\n" * limit not in text):
            yield text
            continue
        start = 0
        for run in re.finditer(rf"\S{{{limit},}}|\s{{{limit},}}", text):
            for cut in range(run.start() + limit, run.end(), limit):
                yield text[start:cut]
                start = cut
        yield text[start:]


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: Path,
                    extra_special: tuple[str, ...] = ()) -> TextTokenizer:
    """Trains a byte-level BPE of `vocab_size` tokens (specials included: llmjax's own and
    `extra_special`, those an objective needs, e.g. the mask token) and saves it to `path`
    (whole or not at all)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, *extra_special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(bounded_runs(texts), trainer)
    tmp = Path(f"{path}.tmp")
    tokenizer.save(str(tmp))
    tmp.rename(path)
    return TextTokenizer(path)
