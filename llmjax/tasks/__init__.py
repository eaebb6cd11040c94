"""Task data for fine-tuning: labelled or paired examples (classification, generation, chat)
from a built-in demo task or from local JSON-lines and Parquet files, split into train and
validation by a hash of each example, checked, and fingerprinted.

No JAX here: the objectives that turn examples into batches, and the evaluation adapters,
import this layer, not the other way round.
"""

from llmjax.tasks.examples import KINDS, Example, TaskData, describe, majority_label
from llmjax.tasks.files import absolute
from llmjax.tasks.loader import load
from llmjax.tasks.stdlib import BUILTIN

__all__ = ["BUILTIN", "KINDS", "Example", "TaskData", "absolute", "describe", "load", "majority_label"]
