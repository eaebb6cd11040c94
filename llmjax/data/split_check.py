"""The refusal of a preparation that would leave its train split, or its validation split while
val_percent asks for one, empty (a few JSONL lines, all hashed to train): training would stop at
its first evaluation, where no --val_percent can mend it. The error names the value that puts
documents on both sides, worked out from the documents' hash buckets."""

from __future__ import annotations

import math
from collections.abc import Callable

from llmjax.data.errors import DataError


class SplitError(DataError):
    """A split of the prepared dataset would be empty; the message names the counts and the fix."""


def check(counts: dict[str, int], options, files: list, buckets: Callable[[], list[int]]) -> None:
    """Raises SplitError when a split of `counts` (documents per split) is empty. `buckets` gives
    the hash buckets of the documents placed by hash, called only then: it reads them again."""
    empty = "train" if not counts["train"] else "val" if not counts["val"] and options.val_percent > 0 else ""
    if not empty:
        return
    if not counts["train"] and not counts["val"]:
        raise SplitError(f"no text in {list(options.inputs)}: every document is empty or blank (they are "
                         f"skipped); give inputs that hold text.")
    found = sorted(buckets())
    fix = _val_percent_fix(empty, found[0], found[-1]) if len(found) > 1 and found[0] < found[-1] else ""
    if len(files) == 1 and files[0].kind == "text":  # One document, of which no tail could be held out.
        fix += (f"decompress {files[0].path} (a corpus of one uncompressed text file holds out its tail), or "
                if files[0].compression else f"break {files[0].path} into lines (its held-out tail starts at one), or ")
    raise SplitError(f"the dataset would have no {'training' if empty == 'train' else 'validation'} documents "
                     f"({counts['train']:,} train, {counts['val']:,} validation with --val_percent "
                     f"{options.val_percent:g}); {fix}add documents.")


def _val_percent_fix(empty: str, lowest: int, highest: int) -> str:
    """How to move the document of the lowest bucket into validation, or that of the highest
    into training, keeping the other where it is (a document is held out when its bucket is
    below val_percent * 100; the values keep clear of float rounding at the boundary); with the
    whole number llmjax-train's data.val_percent takes where one does."""
    if empty == "val":
        given, whole = (lowest + 1) / 100, math.ceil((lowest + 1) / 100)
        fits, fix = whole * 100 <= highest, f"raise --val_percent to at least {given:g}"
    else:
        given, whole = (highest - 0.5) / 100, highest // 100
        fits, fix = lowest < whole * 100, f"lower --val_percent to at most {given:g}"
    return fix + (f" (data.val_percent={whole} for llmjax-train), or " if fits else ", or ")
