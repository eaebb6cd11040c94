"""Training on prepared datasets and mixtures, bits per byte, llmjax-eval, tokenizer refusals."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import jax

from conftest import ROOT, init_params, make_tiny_config, run_train, train_env
from llmjax import model
from test_train_step import random_batch
from llmjax.data.prepare import PrepareOptions, prepare
from llmjax.train.objectives.causal_lm import OBJECTIVE as CAUSAL_LM

QUIET = dict(log=lambda *_: None, progress=False)
TINY = ("--config.data.seq_len=32", "--config.train.steps=12", "--config.train.eval_every=6",
        "--config.checkpoint.every_steps=6")


def _texts(root, count, seed, words):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(count):
        (root / f"{i:03d}.txt").write_text(" ".join(rng.choice(words, rng.integers(30, 300))))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """code and prose share one tokenizer; other has its own."""
    base = tmp_path_factory.mktemp("eval-data")
    _texts(base / "code-text", 40, 0, ["def", "f(x):", "return", "x", "+", "1", "\n", "    "])
    _texts(base / "prose-text", 40, 1, ["the", "cat", "sat", "on", "a", "mat", ".", "\n"])
    code = prepare(PrepareOptions(inputs=(str(base / "code-text"),), vocab_size=300, val_percent=20, workers=1),
                   base / "code", **QUIET)
    prose = prepare(PrepareOptions(inputs=(str(base / "prose-text"),), tokenizer=str(code / "tokenizer.json"),
                                   val_percent=20, workers=1), base / "prose", **QUIET)
    other = prepare(PrepareOptions(inputs=(str(base / "prose-text"),), vocab_size=290, val_percent=20, workers=1),
                    base / "other", **QUIET)
    return {"code": code, "prose": prose, "other": other}


def _records(workdir, split):
    return [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def _eval(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "llmjax.cli.eval", *args], cwd=ROOT, capture_output=True,
                          text=True, env=train_env(tmp_path / "cache"), timeout=300)


def test_bits_per_byte_definition():
    values = CAUSAL_LM.metrics((693.1471805599453, 500), num_bytes=1000)
    assert values["loss"] == pytest.approx(693.1471805599453 / 500)
    assert values["bits_per_byte"] == pytest.approx(1.0)  # 693.1 nats = 1000 bits over 1000 bytes.
    assert values["perplexity"] == pytest.approx(np.exp(values["loss"]))


def test_position_sums_split_the_loss_by_position_in_the_document():
    config = make_tiny_config()
    params = init_params(config)
    batch = random_batch(config)  # Two documents per row: positions 0..7, then 0..7 again.
    batch["weights"][0, 3] = 0.0
    nll, tokens = CAUSAL_LM.position_sums(params, batch, config=config)
    logits = model.apply(params, batch["inputs"], batch["positions"], batch["segment_ids"], config=config)
    per_token = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), batch["targets"][..., None], -1)[..., 0]
    expected = np.zeros(16)
    np.add.at(expected, batch["positions"], per_token * batch["weights"])
    np.testing.assert_allclose(nll, expected, rtol=1e-5)
    assert tokens.tolist() == [16] * 3 + [15] + [16] * 4 + [0] * 8
    total, count = CAUSAL_LM.eval_sums(params, batch, config=config)
    assert float(np.sum(nll)) == pytest.approx(float(total), rel=1e-5) and float(np.sum(tokens)) == float(count)


@pytest.mark.slow
def test_mixture_training_then_standalone_eval_reproduces_the_run(tmp_path, datasets):
    run = tmp_path / "run"
    mixture = f"--config.data.mixture={datasets['code']}:0.7,{datasets['prose']}:0.3"
    result = run_train(run, *TINY, mixture, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val code loss" in result.stdout and "val prose loss" in result.stdout and "bpb" in result.stdout
    final = {split: _records(run, split)[-1] for split in ("val", "val_code", "val_prose")}
    assert all(np.isfinite(r["bits_per_byte"]) and 0 < r["bits_per_byte"] < 10 for r in final.values())
    assert json.loads((run / "summary.json").read_text())["final_val_bits_per_byte"] == \
        pytest.approx(final["val"]["bits_per_byte"])
    assert (run / "tokenizer.json").read_bytes() == (datasets["code"] / "tokenizer.json").read_bytes()

    result = _eval(tmp_path, f"--workdir={run}", f"--out={tmp_path / 'eval.json'}", "--per_position")
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["step"] == 12
    assert "| code | loss at position 0: " in result.stdout
    for name in ("code", "prose"):  # The per-position losses are the same tokens' loss, split up.
        curve = results["per_position"][name]
        assert len(curve["loss"]) == 32
        pooled = sum(loss * n for loss, n in zip(curve["loss"], curve["tokens"]) if n) / sum(curve["tokens"])
        assert pooled == pytest.approx(results["results"][name]["loss"], rel=1e-5)
    for name in ("code", "prose", "all"):
        expected = final["val" if name == "all" else f"val_{name}"]
        for key in ("loss", "perplexity", "bits_per_byte"):
            assert results["results"][name][key] == pytest.approx(expected[key], rel=1e-5), (name, key)

    earlier = _eval(tmp_path, f"--workdir={run}", "--step=6", f"--data={datasets['prose']}", "--batches=2")
    assert earlier.returncode == 0, earlier.stderr
    line = next(x for x in earlier.stdout.splitlines() if x.startswith("step 6 | prose"))
    assert float(line.split("loss ")[1].split()[0]) == pytest.approx(_records(run, "val_prose")[0]["loss"], abs=1e-4)

    refused = _eval(tmp_path, f"--workdir={run}", f"--data={datasets['other']}")
    assert refused.returncode != 0 and "is not the one the run" in refused.stderr
    # A directory of text is read with --glob (the run's data.glob by default) and tokenized with
    # the run's own tokenizer.
    prose_text = datasets["prose"].parent / "prose-text"
    unmatched = _eval(tmp_path, f"--workdir={run}", f"--data={prose_text}")
    assert unmatched.returncode == 2 and "llmjax-eval --glob" in unmatched.stderr, unmatched.stderr
    text = _eval(tmp_path, f"--workdir={run}", f"--data={prose_text}", "--glob=*.txt", "--batches=1")
    assert text.returncode == 0, text.stderr[-3000:]
    fingerprint = re.search(r"tokenizer (\w+) \(", result.stdout).group(1)
    assert "data: prose-text: " in text.stdout and f"tokenizer {fingerprint} (" in text.stdout, text.stdout
    missing = _eval(tmp_path, f"--workdir={run}", "--step=7")
    assert missing.returncode != 0 and "no checkpoint of that step; it has [6, 12]" in missing.stderr


@pytest.mark.slow
def test_tokenizer_mismatches_are_refused_before_training(tmp_path, datasets):
    small = run_train(tmp_path / "small", *TINY, f"--config.data.source={datasets['code']}",
                      "--config.model.vocab_size=128", cache=tmp_path / "cache")
    assert small.returncode == 2
    assert "model.vocab_size=128 is smaller than the data's tokenizer (300 tokens" in small.stderr
    assert "compiled" not in small.stdout and not (tmp_path / "small").exists()

    mixed = run_train(tmp_path / "mixed", *TINY, f"--config.data.mixture={datasets['code']}:1,{datasets['other']}:1",
                      cache=tmp_path / "cache")
    assert mixed.returncode == 2 and "use different tokenizers" in mixed.stderr

    first = run_train(tmp_path / "first", *TINY, f"--config.data.source={datasets['code']}", cache=tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-2000:]
    branch = run_train(tmp_path / "branch", *TINY, f"--config.data.source={datasets['other']}",
                       f"--config.checkpoint.init_from={tmp_path / 'first'}", cache=tmp_path / "cache")
    assert branch.returncode == 2 and "is not the one the run in" in branch.stderr
    assert "compiled" not in branch.stdout and not (tmp_path / "branch").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/bert_tiny.py", "configs/t5_tiny.py"])
def test_standalone_eval_of_mlm_and_span_runs_reproduces_their_metrics(tmp_path, config):
    """Each objective's own evaluation (loss, perplexity, accuracy of its scored tokens; no bits
    per byte for either) from llmjax-eval equals the run's last validation record."""
    run = tmp_path / "run"
    result = run_train(run, "--config.train.steps=10", "--config.train.eval_every=10", cache=tmp_path / "cache",
                       config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    final = _records(run, "val")[-1]
    result = _eval(tmp_path, f"--workdir={run}", f"--out={tmp_path / 'eval.json'}")
    assert result.returncode == 0, result.stderr
    (name, values), = json.loads((tmp_path / "eval.json").read_text())["results"].items()
    assert set(values) >= {"loss", "perplexity", "accuracy"} and "bits_per_byte" not in values
    for key in ("loss", "perplexity", "accuracy"):
        assert values[key] == pytest.approx(final[key], rel=1e-5), key
    assert f"step 10 | {name} | loss {values['loss']:.4f} | ppl" in result.stdout


@pytest.mark.parametrize("preset,objective", [("t5-tiny", "span"), ("t5-tiny", "seq2seq")])
def test_per_position_losses_of_an_encoder_decoder_are_refused_in_one_line(preset, objective):
    """Its targets read the whole encoder input: there is no context length to plot them by
    (this was a broadcasting traceback from the compiler)."""
    from llmjax.errors import LlmjaxError  # noqa: PLC0415
    from llmjax.presets import compose  # noqa: PLC0415
    from llmjax.run import bootstrap  # noqa: PLC0415

    run = bootstrap(compose(preset, data="stdlib_json", objective=objective), train=False)
    with pytest.raises(LlmjaxError, match=f"objective {objective} has no per-position losses"):
        run.compile_eval_step(per_position=True)
