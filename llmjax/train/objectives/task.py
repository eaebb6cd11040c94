"""What the fine-tuning objectives share: their task (`llmjax.tasks`), tokenised once, and rows
made from its examples rather than from packed windows of the pretraining corpus.

The run takes its pretrained model's tokenizer (or `data.tokenizer`); only a run from scratch
prepares the corpus, to train one. The task's examples are tokenised with it at start-up,
before anything compiles, so an example that does not fit (`truncate="error"`) is refused by
file and line. Training rows are the task's rows in a seeded order redrawn every
epoch (Grain's shuffle), so the batch of step s is a function of (task, seed, s) and resume is
exact; the held-out rows are evaluated in file order, the same every time: all of them, or where
fewer are asked for (train.eval_batches, objective.eval_examples) an evenly spread subset, since
task files often list their examples grouped by label or topic.
"""

from __future__ import annotations

import grain
import numpy as np

from llmjax import tasks
from llmjax.data import pipeline
from llmjax.data.dataset import cache_dir
from llmjax.data.errors import DataError
from llmjax.tasks import labels as label_set


_TOKENIZED: dict[tuple, object] = {}  # (objective, tokenizer, section) -> tokenised task, built once per process.


def load_task(config, log=print) -> tasks.TaskData:
    """The run's task; refused when its examples are not those the run was started on."""
    task = tasks.load(config.objective, cache_dir(config), log)
    saved = config.objective.task_fingerprint
    if saved and saved != task.fingerprint:
        raise DataError(f"the task's examples ({task.name}) are not those this run was started on: their "
                        f"fingerprint is {task.fingerprint}, the run's {saved} (a task file edited or replaced "
                        f"since?). Restore the files, or fine-tune on these examples in a new workdir.")
    return task


def spread(count: int, total: int) -> list[int]:
    """Indices of `count` of `total` held-out examples, evenly spaced through the file (all of
    them, in order, when `count` covers them): the first `count` of a file grouped by label
    would score two labels of eight, and a baseline over all of them would not compare."""
    if count >= total:
        return list(range(total))
    return [i * total // count for i in range(count)]


def fit(tokens: list, room: int, config, where: str, what: str, within: str = "", keep_start: bool = False) -> list:
    """`tokens` cut to `room` as objective.truncate says, or refused naming the example; `within`
    says what bounds the room and how to raise it (by default, a row of data.seq_len). A response
    keeps its start whatever the mode (`keep_start`): cut there, it would teach the model to
    begin an answer mid-sentence."""
    if len(tokens) <= room:
        return tokens
    mode = config.objective.truncate
    if mode == "error":
        within = within or f"a row of data.seq_len={config.data.seq_len}; raise data.seq_len"
        raise DataError(f"{where}: the {what} is {len(tokens)} tokens, over the {room} that fit {within}, "
                        f"shorten the example, or set objective.truncate=right (or left) to cut it.")
    return tokens[:room] if mode == "right" or keep_start else tokens[len(tokens) - room:]


def room_beside(fixed: int, total: int, within: str, where: str = "") -> int:
    """What `total` tokens leave for an example's prompt and response beside the `fixed` tokens
    around them: objective.template's, the same for every example, or (`where` an example) the
    header its chat template opens the answer with."""
    if total - fixed >= 1:
        return total - fixed
    if where:
        raise DataError(f"{where}: the chat template's header opening the answer is {fixed} tokens, leaving no "
                        f"room in {within}.")
    raise DataError(f"the text of objective.template around {{prompt}} is {fixed} tokens, leaving no room in "
                    f"{within}, or shorten objective.template.")


class TaskObjective:
    """Subclasses define `kinds` (the task kinds they train on), `encode(task, tokenizer,
    config)` -> (train rows, val rows, extras) and the batch fields, loss and metrics."""
    kinds: tuple[str, ...] = ()
    special_tokens: tuple[str, ...] = ()

    def window_len(self, config) -> int:
        return config.data.seq_len

    def resolve(self, config, log):
        """The task's label set written into the config (objective.labels), so the head's
        shape, and every later evaluation or export, is fixed by the run's own config."""
        config = config.copy_and_resolve_references()
        o = config.objective
        o.task_files, o.val_files = tasks.absolute(o.task_files), tasks.absolute(o.val_files)
        task = load_task(config, log)
        if task.kind not in self.kinds:
            raise DataError(f"objective {self.name} trains on {' or '.join(self.kinds)} tasks, and "
                            f"{task.name} is a {task.kind} task; choose the objective for it.")
        if task.labels and not o.labels:
            o.labels = label_set.format(task.labels)
        o.task_fingerprint = task.fingerprint
        name, scores = self.baseline(task, config)
        log(f"baseline ({name}) on the held-out examples: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        return config

    def token_ids(self, tokenizer, config=None) -> dict:
        """The task tokenised (rows and what evaluation needs), built once per process."""
        key = (self.name, tokenizer.fingerprint, config.data.seq_len, config.objective.to_json())
        if key not in _TOKENIZED:
            task = load_task(config, log=lambda *_: None)
            _TOKENIZED[key] = {"tokenizer": tokenizer, "task": task, **self.encode(task, tokenizer, config)}
        return _TOKENIZED[key]

    def train_rows(self, datasets, config, token_ids: dict):
        del datasets
        rows = token_ids["train"]
        return grain.MapDataset.source(rows).shuffle(seed=pipeline.shuffle_seed(config.seed)).repeat()

    def eval_sets(self, datasets, config, token_ids: dict, batch_size: int, max_batches: int, rows: list[int]):
        """The held-out rows in order, padded with weightless copies of the first to whole
        batches, as many batches as cover them; with fewer (max_batches), rows spread evenly
        through them."""
        del datasets
        val = token_ids["val"]
        count = min(max_batches, -(-len(val) // batch_size))
        chosen = [val[i] for i in spread(count * batch_size, len(val))]
        filler = {k: np.zeros_like(v) if k == "weights" else v for k, v in val[0].items()}
        batches = [{r: chosen[i] if (i := b * batch_size + r) < len(chosen) else filler for r in rows}
                   for b in range(count)]
        return [(token_ids["task"].name, batches, token_ids["tokenizer"].token_bytes())]

    def target_bytes(self, host_batch, token_bytes) -> float:
        del host_batch, token_bytes
        return 0.0

    def extra_metrics(self, params, config, token_ids: dict) -> dict[str, float]:
        del params, config, token_ids
        return {}

