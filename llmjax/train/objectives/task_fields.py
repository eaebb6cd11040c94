"""The config fields every fine-tuning objective shares (its task), and their checks; no JAX,
so a config is built and checked before anything starts."""

from __future__ import annotations

from llmjax.errors import config_error

FIELDS = {
    "task": "",  # A built-in task (stdlib_package, stdlib_docstring), or "" with task_files.
    "task_files": "",  # Comma-separated local .jsonl / .parquet files of examples (globs allowed).
    "val_files": "",  # Held-out files; "" holds out val_percent of task_files by a hash of each example.
    "kind": "",  # What task_files hold: classification | generation | chat ("" for a built-in task).
    "fields": "",  # Renames, "canonical=column,...", e.g. "text=sentence,label=sentiment".
    "labels": "",  # Classification's label set, comma-separated; "" = the train split's, filled in at start.
    # Filled in at start: the examples' fingerprint, so that resuming or evaluating the run on
    # other examples (a task file edited since) is refused rather than silently scored.
    "task_fingerprint": "",
    "val_percent": 10.0,
    "max_examples": 0,  # Train on N examples chosen by a hash of each (0 = all).
    # An example longer than the row: cut (generation: its prompt first) at the end (right) or
    # start (left), or refuse (error).
    "truncate": "right",
}
TRUNCATE = ("right", "left", "error")
GENERATION_FIELDS = {  # sft and seq2seq: the prompt's template and how evaluation generates.
    **FIELDS,
    "template": "{prompt}\n",  # The prompt as the model reads it; the response follows.
    "eval_examples": 64,  # Held-out prompts completed at each evaluation, for BLEU, chrF and ROUGE-L.
    "max_new_tokens": 32,
    "num_beams": 1,  # 1: greedy; more: beam search.
}


def check_fields(config, mesh_shape: dict) -> None:
    """The task fields' own constraints (the task itself is checked when it is loaded)."""
    del mesh_shape
    if config.objective.truncate not in TRUNCATE:
        raise config_error("objective.truncate", config.objective.truncate, f"must be one of {', '.join(TRUNCATE)}.")


def check_generation_fields(config, mesh_shape: dict, in_context: bool = False) -> None:
    """What evaluation's generation needs, refused before anything runs rather than at the first
    evaluation, after training. `in_context`: a decoder continues the prompt in its own context,
    so the new tokens must leave at least one token of model.max_seq_len for it."""
    check_fields(config, mesh_shape)
    o = config.objective
    for key in ("eval_examples", "num_beams", "max_new_tokens"):
        if o[key] < 1:
            raise config_error(f"objective.{key}", o[key], "must be at least 1.")
    if in_context and o.max_new_tokens >= config.model.max_seq_len:
        raise config_error("objective.max_new_tokens", o.max_new_tokens,
                           f"must be below model.max_seq_len={config.model.max_seq_len}, which holds the prompt "
                           f"and the new tokens; lower it (or raise model.max_seq_len).")
