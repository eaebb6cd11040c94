"""Fine-tuning: every family that classifies learns a task from local files; a pretrained run is
fine-tuned (fully and with LoRA) with its weights taken over and, under LoRA, left bit-identical;
the task's label set, baselines and generation metrics are reported. Kill-and-resume of a
fine-tuning run is in tests/test_checkpoint.py's preemption test."""

import json
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, make_tiny_config, run_train, train_env
from llmjax.config import validate
from llmjax.presets import finetune
from llmjax.run import abstract_params
from llmjax.train import objectives
from llmjax.train.objectives.sft import chat_turns
from test_train_step import run_steps

pytestmark = pytest.mark.slow

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()


def write_task(path, count=48, seed=0):
    """A classification task a model can only get right by reading the text: the label says
    which of two marker words it contains."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for i in range(count):
            label = ["red", "blue"][i % 2]
            words = list(rng.choice(WORDS, 6)) + [f"{label}_marker"]
            rng.shuffle(words)
            f.write(json.dumps({"sentence": " ".join(words), "colour": label}) + "\n")
    return path


def write_generation_task(path, count=32, seed=0):
    """A generation task learnt by reading the prompt: answer with the colour it names."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for i in range(count):
            colour = ["red", "blue", "green", "yellow"][i % 4]
            words = list(rng.choice(WORDS, 5)) + [f"{colour}_marker"]
            rng.shuffle(words)
            f.write(json.dumps({"prompt": " ".join(words), "response": f"the colour is {colour}"}) + "\n")
    return path


def records(workdir, split):
    return [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.mark.parametrize("preset", ["tiny", "gpt2-tiny", "bert-tiny", "lstm-tiny"])
def test_every_classifying_family_learns_a_task_from_local_files(tmp_path, preset):
    task = write_task(tmp_path / "task.jsonl")
    result = run_train(tmp_path / "run", "--config.objective.task=", f"--config.objective.task_files={task}",
                       f"--config.objective.val_files={task}", "--config.objective.kind=classification",
                       "--config.objective.fields=text=sentence,label=colour", "--config.train.steps=60",
                       "--config.train.eval_every=60", "--config.optimizer.learning_rate=3e-3",
                       cache=tmp_path / "cache", config=f"configs/finetune.py:package,{preset}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "baseline (majority class) on the held-out examples: accuracy 0.5000" in result.stdout
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["objective"]["labels"] == "blue,red"  # Filled in from the train split, sorted.
    final = records(tmp_path / "run", "val")[-1]
    assert final["accuracy"] == 1.0 and final["macro_f1"] == 1.0, final
    # The summary and the last line report the task's metrics, not bits per byte of a corpus.
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_val"]["macro_f1"] == 1.0 and "final_val_bits_per_byte" not in summary
    assert "acc 1.0000 macro-F1 1.0000; checkpoint saves" in result.stdout.splitlines()[-1]


def params_of(workdir):
    directory = workdir / "checkpoints"
    step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    return ocp.StandardCheckpointer().restore(directory / str(step) / "params")


def test_lora_trains_its_adapters_and_the_head_and_leaves_the_pretrained_weights_bit_identical(tmp_path):
    pretrained = tmp_path / "pretrained"
    assert run_train(pretrained, cache=tmp_path / "cache").returncode == 0
    tuned = tmp_path / "tuned"
    result = run_train(tuned, "--config.finetune.lora_rank=4", "--config.finetune.lora_targets=query,value,down",
                       f"--config.checkpoint.init_from={pretrained}", "--config.train.eval_every=0",
                       cache=tmp_path / "cache", config="configs/finetune.py:package,tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"initialised from {pretrained}" in result.stdout
    before, after = params_of(pretrained), params_of(tuned)
    for path, value in jax.tree_util.tree_flatten_with_path(before)[0]:
        node = after
        for key in path:
            node = node[key.key]
        assert np.array_equal(np.asarray(node), np.asarray(value)), jax.tree_util.keystr(path)
    adapters = after["lora"]["layers"]
    assert set(adapters) == {"attention", "mlp"} and set(adapters["attention"]) == {"query", "value"}
    assert all(np.abs(np.asarray(pair["b"])).max() > 0 for pair in (adapters["attention"]["query"],
                                                                    adapters["mlp"]["down"]))
    assert np.abs(np.asarray(after["task_head"]["kernel"])).max() > 0
    # The whole training state cannot come from a run without the head and adapters: refused
    # before compiling, with nothing written; from a run with the same ones, it continues it.
    full = run_train(tmp_path / "full", "--config.finetune.lora_rank=4", f"--config.checkpoint.init_from={pretrained}",
                     "--config.checkpoint.init_mode=full", cache=tmp_path / "cache",
                     config="configs/finetune.py:package,tiny")
    assert full.returncode != 0 and full.stderr.startswith("error: checkpoint step"), full.stderr[-3000:]
    assert "['lora']" in full.stderr and "is missing there" in full.stderr and "init_mode=params starts those" in full.stderr
    assert "compiled" not in full.stdout and not (tmp_path / "full").exists()
    continued = run_train(tmp_path / "full", "--config.finetune.lora_rank=4", "--config.finetune.lora_targets=query,value,down",
                          f"--config.checkpoint.init_from={tuned}", "--config.checkpoint.init_mode=full",
                          "--config.train.steps=24", "--config.train.eval_every=0", cache=tmp_path / "cache",
                          config="configs/finetune.py:package,tiny")
    assert continued.returncode == 0 and "(full state)" in continued.stdout, continued.stderr[-3000:]
    # llmjax-eval shows the task's metrics, and evaluates the task, not other data.
    evaluated = subprocess.run([sys.executable, "-m", "llmjax.cli.eval", f"--workdir={tuned}"], cwd=ROOT,
                               env=train_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"macro-F1 {records(tuned, 'val')[-1]['macro_f1']:.4f}" in evaluated.stdout, evaluated.stdout
    other = subprocess.run([sys.executable, "-m", "llmjax.cli.eval", f"--workdir={tuned}", "--data=stdlib"], cwd=ROOT,
                           env=train_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300)
    assert other.returncode == 1 and "is a fine-tuning run, evaluated on its task's" in other.stderr, other.stderr
    # A fine-tuned run is a source too: the next run starts from its model with the adapters
    # merged in, as the tuned run applied them (here kept frozen, so its checkpoint shows them).
    again = run_train(tmp_path / "again", f"--config.checkpoint.init_from={tuned}", "--config.finetune.freeze=.*",
                      "--config.train.eval_every=0", cache=tmp_path / "cache", config="configs/finetune.py:package,tiny")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "without its task head and LoRA adapters; its LoRA adapters merged in" in again.stdout
    merged, scale = params_of(tmp_path / "again"), 16.0 / 4
    for path, value in jax.tree_util.tree_flatten_with_path({k: v for k, v in after.items() if k != "lora"})[0]:
        names = [key.key for key in path]
        node, pair = merged, adapters
        for name in names:
            node = node[name]
        for name in names[1:-1]:  # Under lora/layers/: the module's path without "layers" and "kernel".
            pair = pair.get(name, {}) if isinstance(pair, dict) else {}
        expected = np.asarray(value)
        if names[0] == "layers" and names[-1] == "kernel" and "a" in pair:
            expected = expected + scale * np.einsum("lir,lro->lio", np.asarray(pair["a"]),
                                                    np.asarray(pair["b"])).reshape(expected.shape)
            assert not np.array_equal(np.asarray(node), np.asarray(value)), jax.tree_util.keystr(path)
        if names[0] != "task_head":  # The new run's head starts afresh.
            np.testing.assert_allclose(np.asarray(node), expected, rtol=1e-5, atol=1e-6,
                                       err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("targets", ["", "query,value,out,down"])  # The default; configs/finetune.py:package,lora.
def test_lora_of_rank_8_trains_under_2_percent_of_the_default_model(targets):
    config = finetune("package,lora")
    config.finetune.lora_targets = targets
    params, _ = abstract_params(config)
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    assert config.finetune.lora_rank == 8 and count(params["lora"]) / count(params) < 0.02


@pytest.mark.parametrize("preset,adapted", [("tiny", {"query", "value"}), ("bert-tiny", {"query", "value"}),
                                            ("gpt2-tiny", {"qkv"}), ("t5-tiny", {"q", "v"})])
def test_lora_adapts_each_familys_query_and_value_projections_by_default(preset, adapted):
    task = "docstring" if preset.startswith("t5") else "package"
    config = finetune(f"{task},lora,{preset}")
    assert config.finetune.lora_targets == ""
    params, _ = abstract_params(config)
    names = {path[-2].key for path, _ in jax.tree_util.tree_flatten_with_path(params["lora"])[0]}
    assert names == adapted


@pytest.mark.parametrize("overrides, message", [
    ({"finetune.freeze": "embeddingz"}, "pattern 'embeddingz' matches no parameter; parameter paths begin embed/embedding"),
    ({"finetune.lr_multipliers": "task_headz=10"}, "pattern 'task_headz' matches no parameter"),
    ({"finetune.freeze": "task_head|.*"}, None),  # The head is never frozen: this trains it alone.
])
def test_a_pattern_that_matches_no_parameter_is_refused(overrides, message):
    """Before, a misspelt pattern trained exactly as if it were not there."""
    from llmjax.config import ConfigError  # noqa: PLC0415
    from llmjax.train.optimizer import build_optimizer  # noqa: PLC0415

    config = finetune("package,tiny")
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    axes = abstract_params(config)[1]
    if message is None:
        build_optimizer(config, axes)
        return
    with pytest.raises(ConfigError, match=message):
        build_optimizer(config, axes)


@pytest.mark.parametrize("preset, overrides, message", [
    ("tiny", {"finetune.freeze": ".*"}, "freezes every parameter, so nothing would train"),
    ("package,lora,tiny", {}, "without checkpoint.init_from are random"),
    ("package,lora,tiny", {"checkpoint.init_from": "runs/demo", "optimizer.name": "muon"}, "would train as AdamW"),
])
def test_fine_tuning_that_would_not_train_as_asked_is_refused(preset, overrides, message):
    from llmjax.config import ConfigError  # noqa: PLC0415
    from llmjax.presets import compose  # noqa: PLC0415
    from llmjax.train.optimizer import build_optimizer  # noqa: PLC0415

    config = compose(preset) if preset == "tiny" else finetune(preset)
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    with pytest.raises(ConfigError, match=message):
        validate(config, 1)
        build_optimizer(config, abstract_params(config)[1])


def test_lora_without_targets_is_refused_for_a_family_with_no_default():
    with pytest.raises(Exception, match="lstm family has no default targets"):
        validate(finetune("package,lora,lstm-tiny"), 1)


def test_generation_task_reports_its_metrics_and_the_copy_baseline(tmp_path):
    result = run_train(tmp_path / "run", "--config.objective.max_examples=200", "--config.objective.eval_examples=8",
                       "--config.objective.max_new_tokens=8", cache=tmp_path / "cache",
                       config="configs/finetune.py:docstring,tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "baseline (copy the input) on the held-out examples: bleu" in result.stdout
    final = records(tmp_path / "run", "val")[-1]
    assert {"loss", "bleu", "chrf", "rouge_l"} <= set(final) and 0 <= final["chrf"] <= 100


@pytest.mark.parametrize("preset", ["tiny", "t5-tiny"])  # sft on a decoder, seq2seq on the encoder-decoder.
def test_generation_is_learnt_and_scored_by_its_metrics(tmp_path, preset):
    task = write_generation_task(tmp_path / "task.jsonl")
    result = run_train(tmp_path / "run", "--config.objective.task=", f"--config.objective.task_files={task}",
                       f"--config.objective.val_files={task}", "--config.objective.kind=generation",
                       "--config.objective.template={prompt} =>", "--config.objective.max_new_tokens=16",
                       "--config.train.steps=150", "--config.train.eval_every=150", "--config.optimizer.learning_rate=3e-3",
                       cache=tmp_path / "cache", config=f"configs/finetune.py:docstring,{preset}")
    assert result.returncode == 0, result.stderr[-3000:]
    final = records(tmp_path / "run", "val")[-1]
    assert final["rouge_l"] == 100.0 and final["chrf"] == 100.0, final


def test_chat_turns_train_on_the_assistant_as_the_tokenizer_config_template_renders_it():
    template = {"source": "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
                          "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
                "bos_token": "", "eos_token": "</s>"}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and?"}, {"role": "assistant", "content": "bye"}]
    pieces, trained = chat_turns(messages, template)
    assert "".join(pieces) == "<|user|>\nhi</s>\n<|assistant|>\nhello</s>\n<|user|>\nand?</s>\n<|assistant|>\nbye</s>\n"
    assert [p for p, t in zip(pieces, trained) if t] == ["hello</s>\n", "bye</s>\n"]  # Headers are context.
    plain, plain_trained = chat_turns(messages)
    assert [p for p, t in zip(plain, plain_trained) if t] == ["hello\n", "bye\n"]


def test_fine_tuning_runs_sweep_and_report_their_task_metrics(tmp_path):
    task = write_task(tmp_path / "task.jsonl")
    experiment = tmp_path / "exp.py"
    experiment.write_text(
        "from llmjax.presets import finetune\n"
        "def get_config():\n"
        "    return finetune('package,tiny')\n"
        "def get_sweep():\n"
        "    return {'grid': {'optimizer.learning_rate': [1e-3, 3e-3]}}\n")
    overrides = [f"--config.objective.task_files={task}", "--config.objective.task=",
                 "--config.objective.kind=classification", "--config.objective.fields=text=sentence,label=colour"]
    env = train_env(tmp_path / "cache")
    sweep = subprocess.run([sys.executable, "-m", "llmjax.cli.sweep", str(experiment), f"--workdir={tmp_path / 'sweep'}",
                            *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    report = subprocess.run([sys.executable, "-m", "llmjax.cli.report", str(tmp_path / "sweep")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    header = next(line for line in report.stdout.splitlines() if line.startswith("run "))
    assert "accuracy" in header and "macro_f1" in header and "bleu" not in header
    assert (tmp_path / "sweep" / "val_accuracy.png").stat().st_size > 0


@pytest.mark.parametrize("mesh", [dict(fsdp=2, tensor=4), dict(data=2, sequence=2, tensor=2)])
def test_a_lora_classifier_step_on_a_mesh_matches_one_device(mesh):
    """The task head and the adapters shard by the rules table like the model: 5 steps of LoRA
    classification give the same losses and parameters on 8 devices as on one."""
    def config(**ici):
        c = make_tiny_config("llama", num_heads=8, num_kv_heads=8, head_dim=4)
        c.objective = objectives.get("classify").defaults() | {"labels": "a,b,c"}
        c.finetune.update(lora_rank=4, lora_targets="query,value,down", lr_multipliers="task_head=3")
        c.mesh.ici.update({"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1} | ici)
        return c
    single, sharded = config(), config(**mesh)
    rng = np.random.default_rng(0)
    batches = [{"inputs": rng.integers(0, 128, (8, 16)).astype(np.int32),
                "positions": np.tile(np.arange(16, dtype=np.int32), (8, 1)),
                "segment_ids": (np.arange(16) >= rng.integers(4, 16, (8, 1))).astype(np.int32),
                "pool": rng.integers(0, 4, 8).astype(np.int32), "labels": rng.integers(0, 3, 8).astype(np.int32),
                "weights": np.ones(8, np.float32)}] * 5  # One batch: the loss must fall.
    losses_1, state_1 = run_steps(single, batches, jax.devices()[:1])
    losses_8, state_8 = run_steps(sharded, batches, jax.devices())
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    assert losses_1[-1] < losses_1[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 *(jax.tree.map(np.asarray, jax.device_get(s.params)) for s in (state_8, state_1)))


def test_macro_f1_averages_over_the_labels_the_evaluation_holds():
    """Three labels, the evaluated examples of two, all right: 1.0 as scikit-learn's default
    gives, not 2/3 (the absent label counted as F1 0); and from the summed confusion matrix."""
    from sklearn.metrics import f1_score  # noqa: PLC0415

    config = make_tiny_config("llama")
    config.objective = objectives.get("classify").defaults() | {"labels": "a,b,c"}
    confusion = np.array([[3, 0, 0], [1, 2, 0], [0, 0, 0]], np.float32)
    values = objectives.of(config).impl().metrics((0.0, 6.0, confusion), 0.0)
    truth, predicted = [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]
    assert values["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro")) != 0.0
    perfect = objectives.of(config).impl().metrics((0.0, 5.0, np.diag([3.0, 2.0, 0.0])), 0.0)
    assert perfect["macro_f1"] == 1.0


def test_a_run_is_resumed_and_evaluated_only_on_the_examples_it_started_on(tmp_path):
    """The task files are saved as absolute paths (llmjax-eval works from any directory) with
    the examples' fingerprint; relabelled examples are refused on resume and on evaluation,
    instead of being trained or scored silently."""
    (tmp_path / "data").mkdir()
    write_task(tmp_path / "data" / "task.jsonl")
    args = ("--config.objective.task=", "--config.objective.task_files=data/task.jsonl",
            "--config.objective.kind=classification", "--config.objective.fields=text=sentence,label=colour",
            "--config.train.eval_every=0", "--config.optimizer.warmup_steps=1")
    command = [sys.executable, "-m", "llmjax.cli.train", "--config", str(ROOT / "configs/finetune.py:package,tiny"),
               f"--workdir={tmp_path / 'run'}", *args]
    first = subprocess.run([*command, "--config.train.steps=4"], cwd=tmp_path, env=train_env(tmp_path / "cache"),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["objective"]
    assert saved["task_files"] == str(tmp_path / "data" / "task.jsonl") and len(saved["task_fingerprint"]) == 16
    evaluate = [sys.executable, "-m", "llmjax.cli.eval", f"--workdir={tmp_path / 'run'}"]
    evaluated = subprocess.run(evaluate, cwd=ROOT, env=train_env(tmp_path / "cache"), capture_output=True,
                               text=True, timeout=300)
    assert evaluated.returncode == 0 and "acc" in evaluated.stdout, evaluated.stderr[-3000:]
    text = (tmp_path / "data" / "task.jsonl").read_text()
    (tmp_path / "data" / "task.jsonl").write_text(text.replace('"red"', '"tmp"').replace('"blue"', '"red"')
                                                  .replace('"tmp"', '"blue"'))
    resumed = subprocess.run([*command, "--config.train.steps=8"], cwd=tmp_path,
                             env=train_env(tmp_path / "cache"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode != 0 and "objective.task_fingerprint" in resumed.stderr, resumed.stderr[-3000:]
    refused = subprocess.run(evaluate, cwd=ROOT, env=train_env(tmp_path / "cache"), capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0 and "are not those this run was started on" in refused.stderr, refused.stderr[-3000:]


def test_a_saved_run_config_takes_another_objective_of_its_family(tmp_path):
    """configs/imported.py:RUN,OBJECTIVE: the run's model and data, that objective's defaults."""
    from llmjax.config import ConfigError, default_config  # noqa: PLC0415
    from llmjax.presets import from_run  # noqa: PLC0415

    saved = default_config("bert")
    saved.model.num_layers = 3
    (tmp_path / "config.json").write_text(json.dumps(saved.to_dict()))
    config = from_run(f"{tmp_path},classify")
    assert config.objective.name == "classify" and "task_files" in config.objective
    assert config.model.num_layers == 3 and from_run(str(tmp_path)).objective.name == "mlm"
    with pytest.raises(ConfigError, match="the bert family trains on mlm, classify, not 'sft'"):
        from_run(f"{tmp_path},sft")


def test_a_model_pretrained_with_special_tokens_fine_tunes_on_its_tokenizer_without_its_corpus(tmp_path):
    """BERT pretrained by MLM has [MASK] in its tokenizer, which a classifier's corpus would not
    train into one: the fine-tuning run (and its evaluation) takes the pretrained run's tokenizer
    instead of preparing the corpus, into a cache that is left without any dataset."""
    pretrained = tmp_path / "pretrained"
    result = run_train(pretrained, "--config.train.steps=6", cache=tmp_path / "cache", config="configs/bert_tiny.py")
    assert result.returncode == 0, result.stderr[-3000:]
    tuned, cache = tmp_path / "tuned", tmp_path / "tuning-cache"
    result = run_train(tuned, f"--config.checkpoint.init_from={pretrained}", "--config.train.steps=8",
                       "--config.train.eval_every=8", cache=cache, config="configs/finetune.py:package,bert-tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"data: the task is tokenized with {pretrained / 'tokenizer.json'}" in result.stdout
    assert (tuned / "tokenizer.json").read_bytes() == (pretrained / "tokenizer.json").read_bytes()
    assert not list(cache.glob("dataset-*")), sorted(cache.iterdir())
    evaluated = subprocess.run([sys.executable, "-m", "llmjax.cli.eval", f"--workdir={tuned}"], cwd=ROOT,
                               env=train_env(cache), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"accuracy {records(tuned, 'val')[-1]['accuracy']:.4f}" in evaluated.stdout, evaluated.stdout
    assert not list(cache.glob("dataset-*")), sorted(cache.iterdir())
