"""lm-eval's `llmjax` model (llmjax/evaluation/) against llmjax's own forward pass and
generation on a tiny trained run, and real lm-eval evaluations of a local task, all offline."""

import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import sys

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # Read by `datasets` and the hub client on import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from llmjax import model  # noqa: E402
from llmjax.config import default_config  # noqa: E402
from llmjax.evaluation.loading import EvaluationError  # noqa: E402
from llmjax.evaluation import lm_eval_adapter  # noqa: E402
from llmjax.evaluation.lm_eval_adapter import LlmjaxLM  # noqa: E402
from llmjax.rundir import RunDir  # noqa: E402
from llmjax.sample.generate import Settings, generate  # noqa: E402
from llmjax.sample.select import Sampling  # noqa: E402

from conftest import ROOT, run_train, train_env  # noqa: E402

PAIRS = [("def loads(s", "):\n    return"), ("import json", "\nimport os"), ("", "class JSONDecoder"),
         ("x = 1\n" * 40, "y = 2")]  # The last is longer than max_seq_len=64: cut from the left.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, worker_id):
    """A tiny trained run, shared by the pytest-xdist workers of a session (the first trains it)."""
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    path = root / "lm-eval-run"
    with open(root / "lm-eval-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if RunDir(path).status()["state"] != "done":
            shutil.rmtree(path, ignore_errors=True)
            # 400 steps (seconds): enough that greedy text depends on its prompt. fp32 activations:
            # padding and batching change no logit beyond fp32 rounding (bf16 would differ in its
            # third digit, which a 1e-4 comparison cannot tell from a wrong index).
            result = run_train(path, "--config.train.steps=400", "--config.optimizer.warmup_steps=2",
                               "--config.model.dtype=float32", "--config.train.eval_every=0", cache=root / "lm-eval-cache")
            assert result.returncode == 0, result.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def lm(workdir):
    return LlmjaxLM(workdir=str(workdir), batch_size=3)


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


@functools.cache
def _host_params(lm):
    """The run's parameters as numpy arrays: the reference computations run on one device."""
    return jax.tree.map(np.asarray, lm.loaded.params)


@functools.cache
def _forward(lm):
    """llmjax.model.apply, jitted (the same shapes recur: rolling windows)."""
    return functools.partial(jax.jit(functools.partial(model.apply, config=lm.loaded.config)), _host_params(lm))


def _target_logprobs(lm, tokens):
    """(log-probability of tokens[1:] each after the tokens before it, whether each is the
    argmax there): one forward pass of llmjax.model.apply, unbatched and unpadded."""
    logits = np.asarray(_forward(lm)(np.asarray(tokens[:-1])[None])[0])
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
    return logp[np.arange(len(tokens) - 1), tokens[1:]], logits.argmax(-1) == np.asarray(tokens[1:])


def test_loglikelihood_is_the_forward_pass_sum_batched_or_not(lm):
    encode = lambda text: lm.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    results = lm.loglikelihood(_requests("loglikelihood", PAIRS))
    for (context, continuation), (logprob, greedy) in zip(PAIRS, results):
        if context:  # The whole text's tokens, split at the context's own token count ...
            stripped = context.rstrip()  # ... after lm-eval moves its trailing spaces to the continuation.
            context, continuation = stripped, context[len(stripped):] + continuation
            tokens = encode(context + continuation)
            scored = len(tokens) - len(encode(context))
        else:  # lm-eval conditions an empty context on the prefix token (EOS for this run).
            tokens = [lm.loaded.eos_ids[0]] + encode(continuation)
            scored = len(tokens) - 1
        tokens = tokens[-(lm.max_length + 1):]
        target, argmax = _target_logprobs(lm, tokens)
        assert logprob == pytest.approx(target[-scored:].sum(), abs=1e-4)
        assert greedy == bool(argmax[-scored:].all())
    one_at_a_time = [lm.loglikelihood(_requests("loglikelihood", [pair]))[0] for pair in PAIRS]
    np.testing.assert_allclose([r[0] for r in results], [r[0] for r in one_at_a_time], atol=1e-4)
    assert [r[1] for r in results] == [r[1] for r in one_at_a_time]
    # One compilation per length bucket (16, 32, 64), however the requests were batched.
    assert lm.scorer._forward._cache_size() <= 3


def test_parameters_sharded_over_devices_score_the_same(lm, workdir):
    sharded = LlmjaxLM(workdir=str(workdir), batch_size=3, fsdp=4)
    assert dict(sharded.loaded.run.mesh.shape) == {"data": 2, "fsdp": 4, "expert": 1, "sequence": 1, "tensor": 1}
    requests = _requests("loglikelihood", PAIRS)
    np.testing.assert_allclose(sharded.loglikelihood(requests), lm.loglikelihood(requests), atol=1e-4)


def test_a_continuation_the_greedy_decoder_would_write_is_greedy(lm):
    context = lm.tokenizer.encode("def dumps(obj", add_special_tokens=False).ids
    new = lm.scorer.generate([context], 4)[0]
    assert lm.scorer.loglikelihood([(context, new)])[0][1]


def test_loglikelihood_rolling_short_and_long_documents(lm):
    prefix = lm.loaded.eos_ids[0]
    short = "def f(x):\n    return x + 1\n"
    long = "".join(f"value_{i} = compute({i}, key='k{i}')\n" for i in range(20))
    tokens_short, tokens_long = (lm.tokenizer.encode(t, add_special_tokens=False).ids for t in (short, long))
    assert len(tokens_short) < lm.max_length < 2 * lm.max_length < len(tokens_long)
    rolling = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(short,), (long,)]))
    # Shorter than max_seq_len: one forward pass over the prefix token and the document.
    assert rolling[0] == pytest.approx(_target_logprobs(lm, [prefix] + tokens_short)[0].sum(), abs=1e-4)
    # Longer: lm-eval's disjoint windows, every token predicted exactly once.
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens_long, prefix, lm.max_length, 1)]
    assert sum((w[1] for w in windows), []) == tokens_long
    expected = sum(_target_logprobs(lm, context + continuation)[0][-len(continuation):].sum()
                   for context, continuation in windows)
    assert rolling[1] == pytest.approx(expected, abs=1e-4)


def test_generate_until_is_greedy_generation_cut_at_the_stop_string(lm):
    prompts = ["def loads(s", "import", "class JSONEncoder(object):\n" * 12]  # The last: cut from the left.
    max_new = 12
    expected, stops = [], []
    for prompt in prompts:
        tokens = lm.tokenizer.encode(prompt, add_special_tokens=False).ids[-(lm.max_length - max_new):]
        out = generate(_host_params(lm), lm.loaded.config, [tokens], Settings(max_new, Sampling(0.0)),
                       eos_ids=lm.loaded.eos_ids, pad_id=lm.loaded.pad_id)["tokens"][0].tolist()
        ends = [i for i, t in enumerate(out) if t in lm.loaded.eos_ids]
        text = lm.tokenizer.decode(out[:ends[0]] if ends else out)
        stop = text[len(text) // 2:len(text) // 2 + 2] or "\n"
        stops.append(stop)
        expected.append(text.split(stop)[0])
    assert any(e != "" for e in expected)
    gen_kwargs = [{"until": [stop], "max_gen_toks": max_new, "do_sample": False} for stop in stops]
    results = lm.generate_until(_requests("generate_until", list(zip(prompts, gen_kwargs))))
    assert results == expected


def test_generation_longer_than_the_model_is_refused_with_its_fix(lm, workdir):
    with pytest.raises(EvaluationError, match="max_gen_toks=64.*--gen_kwargs max_gen_toks=N"):
        lm.generate_until(_requests("generate_until", [("def", {"until": ["\n"], "max_gen_toks": 64})]))
    # A default as long as the model is refused when the model is loaded, before any task runs.
    with pytest.raises(EvaluationError, match="--model_args max_gen_toks=64.*max_gen_toks=N with N < 64"):
        LlmjaxLM(workdir=str(workdir), max_gen_toks=64)


@pytest.mark.parametrize("family, kind", [("t5", "encoder-decoder"), ("bert", "encoder-only")])
def test_encoder_families_are_refused_by_name(tmp_path, family, kind):
    RunDir(tmp_path).write_config(default_config(family))  # The family is refused before any checkpoint is read.
    with pytest.raises(EvaluationError, match=f"holds a {family} run, an {kind}.*llama, gpt2, lstm"):
        LlmjaxLM(workdir=str(tmp_path))


CHOICES = [("The file json/decoder.py defines", ["class", "banana", "import"], 0),
           ("def loads(s, *,", ["cls=None", "42 42 42", "\n\n\n"], 0),
           ("import", [" re", " zzz", " json"], 2),
           ("    return", [" obj", " )", " self"], 1)]


def _choice_task(tmp_path):
    """A multiple-choice task of local JSON lines: lm-eval reads it through `datasets`, offline."""
    data = tmp_path / "choices.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in CHOICES))
    (tmp_path / "llmjax_choice.yaml").write_text(
        "task: llmjax_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {tmp_path / 'hf-cache'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")


def _expected_accuracy(lm) -> float:
    """From llmjax log-likelihoods: the choice after lm-eval's target delimiter (a space)
    that the model finds most likely."""
    pairs = [(question, " " + choice) for question, choices, _ in CHOICES for choice in choices]
    scores = iter(score for score, _ in lm.loglikelihood(_requests("loglikelihood", pairs)))
    picks = [int(np.argmax([next(scores) for _ in choices])) for _, choices, _ in CHOICES]
    return float(np.mean([pick == answer for pick, (_, _, answer) in zip(picks, CHOICES)]))


def test_lm_eval_reports_the_accuracy_of_llmjax_loglikelihoods(lm, workdir, tmp_path):
    _choice_task(tmp_path)
    results = simple_evaluate(model="llmjax", model_args=f"workdir={workdir}", tasks=["llmjax_choice"],
                              batch_size=4, task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    assert results["results"]["llmjax_choice"]["acc,none"] == pytest.approx(_expected_accuracy(lm))
    assert results["config"]["llmjax_step"] == 400


@pytest.mark.slow
def test_llmjax_lm_eval_command_evaluates_a_run(lm, workdir, tmp_path):
    """The shipped command line (`llmjax-lm-eval` runs this module): lm-eval's own, with the
    llmjax model registered. Slow: lm-eval's command line indexes its thousands of tasks."""
    _choice_task(tmp_path)
    env = dict(train_env(tmp_path / "cache"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "llmjax.evaluation.lm_eval_adapter", "--model", "llmjax",
                             "--model_args", f"workdir={workdir}", "--tasks", "llmjax_choice", "--include_path",
                             str(tmp_path), "--batch_size", "4", "--output_path", str(tmp_path / "out")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = (tmp_path / "out").rglob("results*.json")
    accuracy = json.loads(path.read_text())["results"]["llmjax_choice"]["acc,none"]
    assert accuracy == pytest.approx(_expected_accuracy(lm))
    assert "llmjax_choice" in result.stdout  # lm-eval's results table.


def test_llmjax_lm_eval_reports_an_llmjax_error_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lm_eval_adapter, "cli_evaluate", lambda: LlmjaxLM(workdir=str(tmp_path / "missing")))
    with pytest.raises(SystemExit) as exited:
        lm_eval_adapter.cli()
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing'} has no config.json")


@pytest.mark.parametrize("model_args, message", [
    ("workdr=RUN", "llmjax takes no 'workdr'; its keys are workdir, step"),
    ("step=3", "give the run to evaluate, workdir=RUN"),
    ("workdir=RUN,step=abc", "step='abc' is not a whole number"),
])
def test_model_args_llmjax_cannot_take_are_one_error(tmp_path, model_args, message):
    """Through lm-eval's own constructor path, before any run is loaded."""
    with pytest.raises(EvaluationError, match=re.escape(message)):
        LlmjaxLM.create_from_arg_string(model_args.replace("RUN", str(tmp_path)))


def test_a_prefix_lm_scores_a_continuation_reading_its_context_both_ways(lm):
    """As it was trained: the context is the prefix, seen both ways; the continuation causal."""
    import dataclasses  # noqa: PLC0415

    from llmjax.evaluation.scoring import Scorer  # noqa: PLC0415

    config = lm.loaded.config.copy_and_resolve_references()
    config.objective = default_config("llama", "prefix_lm").objective
    scorer = Scorer(dataclasses.replace(lm.loaded, config=config), batch_size=2)
    pairs = [([5, 9, 17, 33], [40, 41]), ([7, 8], [9, 10, 11]), ([12, 13, 14], [15])]
    for (context, continuation), (logprob, _) in zip(pairs, scorer.loglikelihood(pairs)):
        tokens = context + continuation
        batch = {"inputs": np.asarray([tokens[:-1]]),
                 "prefix": np.asarray([[i < len(context) for i in range(len(tokens) - 1)]])}
        logp = jax.nn.log_softmax(model.forward(_host_params(lm), batch, config=config)[0], axis=-1)
        expected = sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(continuation))
        assert logprob == pytest.approx(expected, abs=1e-4)
        causal = sum(float(r) for r in _target_logprobs(lm, tokens)[0][-len(continuation):])
        assert abs(causal - expected) > 1e-3  # Read causally, the context scores otherwise.
