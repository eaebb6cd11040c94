"""The default experiment: a ~6M-parameter Llama on this interpreter's standard library.

Sized to reach a validation loss far below the corpus's unigram entropy in under ten minutes on
a 2-core CPU.
"""

from llmjax.config import default_config


def get_config():
    return default_config()
