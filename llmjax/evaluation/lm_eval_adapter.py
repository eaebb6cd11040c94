"""lm-eval's model `llmjax`: any llmjax run of a causal decoder (llama, gpt2, lstm) answers
EleutherAI lm-evaluation-harness requests, batched on this host's devices.

    llmjax-lm-eval --model llmjax --model_args workdir=runs/demo --tasks hellaswag --batch_size 32

`llmjax-lm-eval` is lm-eval's own command line (every `lm_eval` argument, unchanged) with this
model registered first: lm-eval 0.4 finds models only in its built-in table and in what was
registered in the running process (`lm_eval.api.registry.register_model`); it reads no entry
points, so a bare `lm_eval --model llmjax` cannot see an installed plugin. From Python,
importing this module registers the model for `lm_eval.simple_evaluate(model="llmjax", ...)`.

model_args: `workdir` (required); `step` (default: the latest checkpoint); `max_gen_toks`
(generation length when a task gives none; default min(256, max_seq_len / 2)); `fsdp` (shard
the parameters over that many devices instead of copying them to each); `seed` (sampling).
lm-eval's --batch_size is rounded up to a multiple of the devices; `auto` is --max_batch_size,
else 32. --device is ignored: JAX uses its own devices (JAX_PLATFORMS chooses).

Requests are tokenized as lm-eval's Hugging Face model does (its `TemplateLM` code): context
and continuation are encoded together and split at the context's own token count, so the
tokens scored are those the model would read in the whole text (a word that merges across the
boundary is scored as a whole, as the tokenizer writes it); an empty context is the prefix
token (BOS for a Hugging Face tokenizer that has one, else EOS). A run trained by llmjax has
never been asked for a document's first token (the target after an EOS has weight 0 in
training), so whatever is scored right after the prefix token is scored by an untrained output.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

from llmjax import cpu_runtime
from llmjax.errors import LlmjaxError
from llmjax.evaluation.loading import EvaluationError, load_run
from llmjax.evaluation.scoring import Scorer
from llmjax.sample.select import Sampling

try:
    from tqdm import tqdm

    from lm_eval.__main__ import cli_evaluate
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
except ImportError as missing:
    raise ImportError(f"llmjax's lm-eval adapter needs lm-eval ({missing}); install the extra: "
                      f"pip install 'llmjax[lmeval]'.") from missing

log = logging.getLogger(__name__)
AUTO_BATCH_SIZE = 32
# Generation settings llmjax.sample understands; the rest are reported once and ignored.
SAMPLING_KEYS = {"do_sample", "temperature", "top_k", "top_p", "num_beams"}


# What --model_args sets (batch sizes and the device come from lm-eval's own flags).
MODEL_ARGS = {"workdir": str, "step": int, "max_gen_toks": int, "fsdp": int, "seed": int}


def check_model_args(args: dict) -> None:
    """One clear error for --model_args that LlmjaxLM cannot take (a misspelt key would
    otherwise be a TypeError traceback after lm-eval has indexed its tasks)."""
    shown = ", ".join(MODEL_ARGS)
    if unknown := sorted(set(args) - set(MODEL_ARGS)):
        raise EvaluationError(f"--model_args: llmjax takes no {unknown[0]!r}; its keys are {shown}.")
    if not args.get("workdir"):
        raise EvaluationError("--model_args: give the run to evaluate, workdir=RUN (its keys are "
                              f"{shown}).")
    for key, kind in MODEL_ARGS.items():
        value = args.get(key)
        if kind is int and value not in (None, "") and not (key == "step" and value == "latest"):
            try:
                int(value)
            except (TypeError, ValueError):
                raise EvaluationError(f"--model_args: {key}={value!r} is not a whole number.") from None


def batch_size_of(batch_size, max_batch_size=None) -> int:
    """lm-eval's --batch_size ("8", 8, "auto", "auto:4") as a number of rows."""
    if isinstance(batch_size, str) and batch_size.startswith("auto"):
        return int(max_batch_size or AUTO_BATCH_SIZE)
    try:
        return int(batch_size)
    except (TypeError, ValueError):
        raise EvaluationError(f"--batch_size {batch_size!r}: give a number of rows or 'auto'.") from None


@dataclasses.dataclass(frozen=True)
class Generation:
    """What a batch of generate_until requests shares (they are batched by it)."""
    max_new_tokens: int
    sampling: Sampling
    num_beams: int = 1


@register_model("llmjax")
class LlmjaxLM(TemplateLM):
    backend = "causal"

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        check_model_args(simple_parse_args_string(arg_string))
        return super().create_from_arg_string(arg_string, additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        check_model_args(arg_dict)
        return super().create_from_arg_obj(arg_dict, additional_config)

    def __init__(self, workdir: str, step: int | None = None, max_gen_toks: int | None = None, fsdp: int = 1,
                 seed: int = 0, batch_size: int | str = 1, max_batch_size: int | None = None, device=None):
        super().__init__()
        del device  # JAX places the model on its own devices.
        self.loaded = load_run(str(workdir), None if step in (None, "", "latest") else int(step), int(fsdp))
        self.tokenizer = self.loaded.tokenizer
        self.scorer = Scorer(self.loaded, batch_size_of(batch_size, max_batch_size))
        self.max_length = self.loaded.config.model.max_seq_len
        self.max_gen_toks = int(max_gen_toks) if max_gen_toks else min(256, self.max_length // 2)
        if not 1 <= self.max_gen_toks < self.max_length:  # Refused before lm-eval builds its requests.
            raise EvaluationError(f"--model_args max_gen_toks={self.max_gen_toks}: must be at least 1 and leave "
                                  f"room for a prompt in model.max_seq_len={self.max_length}; give "
                                  f"max_gen_toks=N with N < {self.max_length}.")
        self.seed = int(seed)
        self._ignored: set[str] = set()

    # Tokens.
    @property
    def eot_token_id(self) -> int:
        return self.loaded.eos_ids[0] if self.loaded.eos_ids else self.loaded.prefix_id

    @property
    def prefix_token_id(self) -> int:
        return self.loaded.prefix_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The run's tokenizer; by default with the special tokens its own post-processor adds
        (none for a tokenizer llmjax trained, BOS for e.g. an imported Llama), as HF's does."""
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens is not False).ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @property
    def tokenizer_name(self) -> str:
        return str(self.loaded.run_dir.path / "tokenizer.json")

    def get_model_info(self) -> dict:
        """What lm-eval records in its results' config."""
        return {"llmjax_workdir": str(self.loaded.run_dir.path), "llmjax_step": self.loaded.step,
                "llmjax_family": self.loaded.config.model.family}

    # Requests.
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) strings, context tokens, continuation tokens)."""
        with tqdm(total=len(requests), disable=disable_tqdm, desc="llmjax loglikelihood") as bar:
            results = self.scorer.loglikelihood([(context, continuation) for _, context, continuation in requests],
                                                progress=bar.update)
        for (strings, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", strings, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood from its first token, in disjoint windows of max_seq_len
        tokens (lm-eval's own windows: each token predicted once, each window read in full)."""
        windows, owners = [], []
        for index, (text,) in enumerate(request.args for request in requests):
            for window in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(window)
                owners.append(index)
        with tqdm(total=len(windows), disable=disable_tqdm, desc="llmjax loglikelihood_rolling") as bar:
            scores = self.scorer.loglikelihood(windows, progress=bar.update)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def _generation(self, gen_kwargs: dict) -> tuple[Generation, list[str]]:
        """(how to generate, the stop strings) of one request's generation kwargs."""
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        eos = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        max_new_tokens = kwargs.pop("max_gen_toks")
        for key in sorted(kwargs.keys() - SAMPLING_KEYS - self._ignored):
            log.warning("llmjax ignores the generation setting %s=%r", key, kwargs[key])
            self._ignored.add(key)
        sampling = (Sampling(float(kwargs.get("temperature", 1.0)), int(kwargs.get("top_k") or 0),
                             float(kwargs.get("top_p") or 1.0)) if kwargs.get("do_sample") else Sampling(0.0))
        return Generation(max_new_tokens, sampling, int(kwargs.get("num_beams") or 1)), until

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each context continued by the run's decoder (greedy unless the task samples), cut at
        the first of its stop strings (`until`, and the end-of-sequence token's text)."""
        groups: dict[Generation, list[int]] = {}
        stops = []
        for index, (_, gen_kwargs) in enumerate(request.args for request in requests):
            generation, until = self._generation(gen_kwargs)
            groups.setdefault(generation, []).append(index)
            stops.append(until)
        results = [""] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="llmjax generate_until") as bar:
            for generation, indices in groups.items():
                new = self.scorer.generate([self.tok_encode(requests[i].args[0]) for i in indices],
                                           generation.max_new_tokens, generation.sampling, seed=self.seed,
                                           num_beams=generation.num_beams, progress=bar.update)
                for i, tokens in zip(indices, new):
                    results[i] = postprocess_generated_text(self.tok_decode(tokens), stops[i], None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
        return results


def cli() -> None:
    """`llmjax-lm-eval ARGS`: `lm_eval ARGS` with the llmjax model registered (by this module's
    import); an llmjax error is one line, as in every llmjax command."""
    cpu_runtime.configure()  # Before JAX starts its backend.
    try:
        cli_evaluate()
    except LlmjaxError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    cli()
