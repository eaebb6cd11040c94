"""What the parity tests of every family share: a few steps of continued training on a tiny
corpus, random token rows, transformers' logits of several models from one reference process,
llmjax's fp32 logits of a run, and the tolerance against transformers'."""

import json

import numpy as np
import pytest

from llmjax import model
from llmjax.checkpoint import restore_params
from llmjax.model import registry
from llmjax.interop.import_hf import import_hf
from llmjax.interop.tensor_map import InteropError
from llmjax.rundir import RunDir

from conftest import run_reference

CONTINUE = ("--config.data.glob=json/*.py", "--config.data.val_percent=20",
            "--config.data.seq_len=64", "--config.train.steps=4", "--config.train.log_every=2",
            "--config.train.eval_every=0", "--config.train.eval_batches=1",
            "--config.train.global_batch_size=8", "--config.optimizer.warmup_steps=1",
            "--config.checkpoint.every_steps=4", "--config.model.dtype=float32")


QUIET = dict(log=lambda *_: None)


def random_tokens(seed, vocab, shape=(3, 24)):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def reference_logits(reference_python, tmp, commands, models) -> None:
    """Runs `commands` and then transformers' fp32 logits of every model {"hf", "tokens"} of
    `models` (name -> model, files under tmp / name) in one reference process (importing
    transformers' models takes seconds); stores each model's as its "logits"."""
    commands = list(commands)
    for name, m in models.items():
        np.save(tmp / name / "tokens.npy", m["tokens"])
        commands.append(["logits", m["hf"], tmp / name / "tokens.npy", tmp / name / "logits.npy"])
    run_reference(reference_python, "batch", json.dumps(commands, default=str))
    for name, m in models.items():
        m["logits"] = np.load(tmp / name / "logits.npy")


def assert_config_refused_before_writing(hf_dir, changes: dict, field: str, tmp_path) -> None:
    """`hf_dir`'s config.json with `changes` (None drops a field) is refused naming `field`,
    and nothing is written beside the copied config."""
    hf = json.loads((hf_dir / "config.json").read_text()) | changes
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({k: v for k, v in hf.items() if v is not None}))
    with pytest.raises(InteropError, match=field):
        import_hf(tmp_path / "hf", tmp_path / "run", **QUIET)
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def llmjax_logits(workdir, tokens):
    """fp32 logits of the run's latest checkpoint on token rows; an encoder-decoder's `tokens`
    are [2, B, T] (encoder inputs, decoder inputs) and the logits the decoder's."""
    config = RunDir(workdir).config
    config.model.dtype = "float32"
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    params = restore_params(workdir, config, step)
    if tokens.ndim == 3:
        batch = {"inputs": tokens[0], "decoder_inputs": tokens[1]}
        return np.asarray(registry.of(config).math().apply(params, batch, config=config))
    return np.asarray(model.apply(params, tokens, config=config))


def assert_logits_match(ours, theirs):
    """1e-4 relative in fp32, measured against the logits' scale."""
    rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert rel < 1e-4, rel
    return rel


# (beams, length penalty): greedy, beam search as transformers defaults it, unpenalised, and
# favouring longer hypotheses.
GENERATIONS = [(1, 1.0), (5, 1.0), (5, 0.0), (5, 2.0)]
NEW_TOKENS = 12


def generation_inputs(seed, vocab):
    """Inputs (prompts) of 10, 7, 4 and 10 tokens, generated from as one padded batch."""
    tokens = random_tokens(seed, vocab, (4, 10)).tolist()
    return [tokens[0], tokens[1][:7], tokens[2][:4], tokens[3]]


def generation_commands(m, tmp, eos):
    """Transformers' generate for each of GENERATIONS, each input alone (no padding)."""
    (tmp / "inputs.json").write_text(json.dumps(m["inputs"]))
    m["eos"] = eos
    return [["generate", m["hf"], NEW_TOKENS, beams, penalty, json.dumps(eos), tmp / "inputs.json",
             tmp / f"generated_{beams}_{penalty}.json"] for beams, penalty in GENERATIONS]


def read_generated(m, tmp) -> None:
    m["generated"] = {(beams, penalty): json.loads((tmp / f"generated_{beams}_{penalty}.json").read_text())
                      for beams, penalty in GENERATIONS}


def until_end(tokens, eos):
    return next((tokens[:i + 1] for i, token in enumerate(tokens) if token in eos), tokens)
