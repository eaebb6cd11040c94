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

from conftest import ROOT, train_command, train_env
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
