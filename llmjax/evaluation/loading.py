"""A run's checkpoint opened for inference on this host's devices: the one place where an
evaluation turns a run directory into (config, tokenizer, model parameters, mesh).

The mesh is data-parallel over every local device, as llmjax-eval lays it out, whatever mesh
the run trained on (`fsdp` > 1 shards the parameters over that many devices instead of
copying them to each). Only causal decoders are loaded: the families whose `llmjax.model.apply`
gives next-token logits and whose cached decoder generates text.
"""

from __future__ import annotations

import dataclasses

import jax
from absl import logging

from llmjax.checkpoint import Checkpointer, check_same_model
from llmjax.config import MESH_AXES, apply_overrides
from llmjax.errors import LlmjaxError
from llmjax.interop.run_files import eos_ids, special_ids
from llmjax.model import registry
from llmjax.run import Run, bootstrap
from llmjax.rundir import RunDir
from llmjax.sample.seq2seq import is_seq2seq


class EvaluationError(LlmjaxError, ValueError):
    """A run or a request that an evaluation cannot use; the message names it and the fix."""


@dataclasses.dataclass
class LoadedRun:
    config: object  # The run's config, its mesh section replaced by the evaluation's.
    tokenizer: object  # The run's `tokenizers.Tokenizer`.
    params: dict  # The model's parameters, laid out on `run.mesh`.
    run: Run  # Mesh, parameter shardings and the axis rules (`run.context()`).
    run_dir: RunDir
    step: int
    eos_ids: tuple[int, ...]  # Tokens that end a generation.
    pad_id: int
    prefix_id: int  # What lm-eval conditions an empty context on (BOS or EOS).


def _is_causal(family) -> bool:
    math = family.math()
    return hasattr(math, "decoder") and not hasattr(math, "seq2seq")


def check_decoder(config, given: str) -> None:
    """Refuses, from the config alone, a family that is not a causal decoder."""
    family = config.model.family
    if not _is_causal(registry.of(config)):
        kind = "an encoder-decoder" if is_seq2seq(config) else "an encoder-only model"
        causal = [name for name in registry.names() if _is_causal(registry.get(name))]
        raise EvaluationError(f"{given} holds a {family} run, {kind}: lm-eval's loglikelihood and "
                              f"generate_until requests need a causal decoder ({', '.join(causal)}); "
                              f"evaluate a run of one of those families.")


def _prefix_id(run_dir: RunDir, ids: dict, ends: list[int]) -> int:
    """BOS where a Hugging Face tokenizer names one (an imported model, or a run continued from
    one), as lm-eval's HF model does; else EOS, which precedes every document in the token
    stream a run trained by llmjax has seen."""
    hf_tokenizer = run_dir.imported is not None or bool(run_dir.tokenizer_config)
    if hf_tokenizer and isinstance(ids["bos_token_id"], int):
        return ids["bos_token_id"]
    if not ends:
        raise EvaluationError(f"{run_dir.given}: its tokenizer has no end-of-document token, which lm-eval "
                              f"needs to score a text from its start; use a tokenizer.json with one.")
    return ends[0]


def load_run(workdir, step: int | None = None, fsdp: int = 1) -> LoadedRun:
    """The run in `workdir` at checkpoint `step` (default: the latest), its parameters restored
    onto this host's devices."""
    run_dir = RunDir(workdir)
    check_decoder(run_dir.config, run_dir.given)
    if jax.process_count() > 1:
        raise EvaluationError("lm-eval through llmjax runs in one process, on its local devices; "
                              "start it on one host.")
    step = run_dir.resolve_step(step)
    tokenizer = run_dir.tokenizer
    if fsdp < 1 or jax.local_device_count() % fsdp:
        raise EvaluationError(f"fsdp={fsdp}: must divide the {jax.local_device_count()} local devices.")
    mesh = {f"mesh.{level}.{axis}": 1 for level in ("ici", "dcn") for axis in MESH_AXES}
    config = apply_overrides(run_dir.config, mesh | {"mesh.ici.data": -1, "mesh.ici.fsdp": fsdp})
    run = bootstrap(config, train=False)
    check_same_model(run_dir.checkpoints, step, run.params)
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # Orbax warns that it opens the run read-only.
    checkpointer = Checkpointer(run_dir.checkpoints, config, read_only=True)
    try:  # The run's parameters, as llmjax.model.apply takes them: where fine-tuning's extras
        # (a task head, LoRA adapters) will be turned into the model's, for every evaluation.
        params = checkpointer.restore(step, run.params).params
    finally:
        checkpointer.close()
        logging.set_verbosity(verbosity)
    ids, ends = special_ids(run_dir), eos_ids(run_dir)
    pad = next((i for i in (ids["pad_token_id"], *ends) if i is not None), 0)
    return LoadedRun(config=config, tokenizer=tokenizer, params=params, run=run, run_dir=run_dir, step=step,
                     eos_ids=tuple(ends), pad_id=pad, prefix_id=_prefix_id(run_dir, ids, ends))
