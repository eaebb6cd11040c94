"""A classification task's label set as `objective.labels` holds it: a config string.

Labels are written comma-separated ("neg,pos") where that reads back the same, and as a JSON
list (`["good, really", "bad"]`) where a label holds a comma, starts with "[" or has spaces at
an end: joined with commas, such labels would split into others when read back.
"""

from __future__ import annotations

import json

from llmjax.data.errors import DataError


def parse(spec: str) -> tuple[str, ...]:
    """The labels of `spec`: a JSON list of strings, or comma-separated (spaces around each
    trimmed, empty entries dropped)."""
    if spec.strip().startswith("["):
        try:
            labels = json.loads(spec)
        except ValueError as error:
            raise DataError(f"labels={spec!r}: not a JSON list ({error}); give a list of strings such as "
                            f"'[\"good, really\", \"bad\"]', or comma-separated labels.") from None
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise DataError(f"labels={spec!r}: a JSON label set must be a list of strings.")
        return tuple(labels)
    return tuple(label for label in (part.strip() for part in spec.split(",")) if label)


def format(labels) -> str:  # noqa: A001 - the inverse of `parse`.
    """`labels` as `parse` reads them back, comma-separated where that is exact."""
    plain = all(label and label == label.strip() and "," not in label for label in labels)
    return ",".join(labels) if plain and not labels[0].startswith("[") else json.dumps(list(labels))
