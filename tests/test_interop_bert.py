"""BERT against transformers itself (in .venv-ref): random Hugging Face BertForMaskedLMs (random
LayerNorms and biases, so a misplaced one shows) are imported and must compute transformers'
fp32 MLM logits; a BERT trained by llmjax is exported and must load in transformers with the
same logits and its mask token; configs llmjax would not reproduce are refused before anything
is written."""

import json
import subprocess

import numpy as np
import pytest

from llmjax.data.tokenizer import MASK, train_tokenizer
from llmjax.interop.export import export_hf
from llmjax.interop.import_hf import import_hf
from llmjax.interop.safetensors_io import SafetensorsReader
from llmjax.rundir import RunDir

from conftest import ROOT, run_reference, train_command, train_env
from hf_parity import (CONTINUE, QUIET, assert_config_refused_before_writing, assert_logits_match, llmjax_logits,
                       random_tokens, reference_logits)

pytestmark = pytest.mark.slow

HF_CONFIG = dict(vocab_size=384, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
                 initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                 pad_token_id=0, eos_token_id=2)
VARIANTS = {"tied": {}, "untied": dict(tie_word_embeddings=False, intermediate_size=96)}
TEXTS = ["import json\nclass Encoder:\n    def encode(self, o):\n        return json.dumps(o)\n"] * 20


@pytest.fixture(scope="module")
def bert(reference_python, tmp_path_factory):
    """Each VARIANT: {"hf", "run", "tokens", "logits"}, a random transformers BERT imported with
    import_hf, and transformers' fp32 logits on random tokens; "trained": the same for a
    bert-tiny run of llmjax-train exported to "hf", plus "mask", the mask token id transformers'
    tokenizer reports. All of transformers' side runs in one process."""
    tmp = tmp_path_factory.mktemp("bert")
    trained = dict(run=tmp / "trained" / "run", hf=tmp / "trained" / "hf")
    training = subprocess.Popen(
        train_command(trained["run"], *CONTINUE, config="configs/bert_tiny.py"), cwd=ROOT,
        env=train_env(tmp / "cache"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    models, commands = {}, []
    for seed, (variant, changes) in enumerate(VARIANTS.items()):
        hf_dir = tmp / variant / "hf"
        hf_dir.mkdir(parents=True)
        train_tokenizer(TEXTS, HF_CONFIG["vocab_size"], hf_dir / "tokenizer.json", (MASK,))
        models[variant] = dict(hf=hf_dir, run=tmp / variant / "run",
                               tokens=random_tokens(seed, HF_CONFIG["vocab_size"]))
        commands.append(["make-bert", hf_dir, json.dumps(HF_CONFIG | changes), seed])
    _, stderr = training.communicate(timeout=600)
    assert training.returncode == 0, stderr[-3000:]
    export_hf(trained["run"], trained["hf"], **QUIET)
    trained["tokens"] = random_tokens(2, RunDir(trained["run"]).config.model.vocab_size)
    commands.append(["encode", trained["hf"], MASK, tmp / "trained" / "mask.npy"])
    everything = models | {"trained": trained}
    reference_logits(reference_python, tmp, commands, everything)
    for m in models.values():
        import_hf(m["hf"], m["run"], **QUIET)
    trained["mask"] = np.load(tmp / "trained" / "mask.npy").tolist()
    return everything


@pytest.mark.parametrize("variant", VARIANTS)
def test_imported_bert_computes_the_logits_of_transformers(bert, variant):
    m = bert[variant]
    rel = assert_logits_match(llmjax_logits(m["run"], m["tokens"]), m["logits"])
    print(f"{variant} imported parity: max |diff| / max |logit| = {rel:.2e}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_of_import_is_the_original_checkpoint(bert, variant, tmp_path):
    m = bert[variant]
    export_hf(m["run"], tmp_path / "out", **QUIET)
    source, exported = SafetensorsReader(m["hf"]), SafetensorsReader(tmp_path / "out")
    # transformers saves a bias its forward pass does not read: tied, the decoder's (a copy of
    # cls.predictions.bias); untied, cls.predictions.bias. llmjax writes only the one read.
    unread = "cls.predictions.bias" if variant == "untied" else "cls.predictions.decoder.bias"
    assert exported.names() == source.names() - {unread}
    for name in exported.names():
        assert exported.read(name).tobytes() == source.read(name).tobytes(), name


def test_trained_bert_export_loads_in_transformers_with_its_logits_and_mask_token(bert):
    m = bert["trained"]
    assert "cls.predictions.decoder.weight" not in SafetensorsReader(m["hf"]).names()  # bert-tiny is tied.
    rel = assert_logits_match(llmjax_logits(m["run"], m["tokens"]), m["logits"])
    print(f"exported parity: max |diff| / max |logit| = {rel:.2e}")
    assert m["mask"] == [RunDir(m["run"]).tokenizer.token_to_id(MASK)]


@pytest.mark.parametrize("changes, field", [
    (dict(hidden_act="gelu_new"), "hidden_act"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
    (dict(is_decoder=True), "is_decoder"),
    (dict(num_attention_heads=5), "num_attention_heads"),
    (dict(intermediate_size=None), "intermediate_size"),
])
def test_unsupported_configs_are_refused_before_anything_is_written(bert, tmp_path, changes, field):
    assert_config_refused_before_writing(bert["tied"]["hf"], changes, field, tmp_path)


def test_an_imported_hub_bert_fine_tunes_on_a_task_reading_cls_first(reference_python, tmp_path):
    """A Hub-style BERT: a WordPiece tokenizer with [CLS]/[SEP] and no eos_token_id in its
    config.json. Imported, it fine-tunes with configs/imported.py:RUN,classify: [SEP] ends
    each text and the head reads [CLS], as BERT was pretrained; the task is learnt."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: PLC0415

    from llmjax.data.tokenizer import TextTokenizer  # noqa: PLC0415
    from llmjax.presets import from_run  # noqa: PLC0415
    from llmjax.tasks import load  # noqa: PLC0415
    from llmjax.train import objectives  # noqa: PLC0415
    from test_finetune import WORDS, write_task  # noqa: PLC0415

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator([" ".join(WORDS + ["red_marker", "blue_marker"])] * 10,
                                  trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tokenizer.save(str(hf_dir / "tokenizer.json"))
    config = {k: v for k, v in HF_CONFIG.items() if k != "eos_token_id"} | {"vocab_size": tokenizer.get_vocab_size()}
    run_reference(reference_python, "make-bert", hf_dir, json.dumps(config), 0)
    import_hf(hf_dir, tmp_path / "imported", **QUIET)
    task = write_task(tmp_path / "task.jsonl")
    args = [f"--config.checkpoint.init_from={tmp_path / 'imported'}", f"--config.objective.task_files={task}",
            f"--config.objective.val_files={task}", "--config.objective.kind=classification",
            "--config.objective.fields=text=sentence,label=colour", "--config.train.steps=40",
            "--config.train.eval_every=40", "--config.optimizer.warmup_steps=4", "--config.data.seq_len=32",
            "--config.train.global_batch_size=8", "--config.data.source=stdlib", "--config.data.glob=json/*.py"]
    imported_config = f"configs/imported.py:{tmp_path / 'imported'},classify"
    result = subprocess.run(train_command(tmp_path / "run", *args, config=imported_config), cwd=ROOT,
                            env=train_env(tmp_path / "cache"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    final = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["split"] == "val" and final["accuracy"] == 1.0, final
    # The rows it trained on: [CLS] text [SEP], pooled at [CLS].
    run_config = from_run(f"{tmp_path / 'run'}")
    text = TextTokenizer(hf_dir / "tokenizer.json")
    assert text.eos_id == tokenizer.token_to_id("[SEP]")
    rows = objectives.of(run_config).impl().encode(load(run_config.objective, tmp_path / "cache", log=lambda *_: None),
                                                   text, run_config)["train"]
    first = rows[0]
    n = int((first["segment_ids"] == 0).sum())
    assert first["inputs"][0] == tokenizer.token_to_id("[CLS]") and first["pool"] == 0
    assert first["inputs"][n - 1] == tokenizer.token_to_id("[SEP]")
