"""JSON files llmjax writes and reads back (a dataset's manifest and plan, a run's config.json,
a tokenizer's record of its special ids). One that was damaged, or edited into something else,
is refused with one line naming the file, the problem and the fix, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path


def read_json_object(path: Path, error: type[Exception], fix: str, keys: tuple[str, ...] = ()) -> dict:
    """The JSON object in `path`, which must hold `keys`; otherwise raises `error` with a
    message naming the file and ending in `fix`."""
    try:
        value = json.loads(Path(path).read_bytes())
    except (ValueError, RecursionError) as problem:  # Not JSON, not UTF-8, nested too deeply.
        reason = f"is not valid JSON ({' '.join(str(problem).split())[:160] or type(problem).__name__})"
    else:
        if not isinstance(value, dict):
            reason = f"holds a JSON {type(value).__name__}, not an object"
        elif missing := [key for key in keys if key not in value]:
            reason = f"lacks {', '.join(missing)}"
        else:
            return value
    raise error(f"{path} {reason}; {fix}")
