"""Against transformers itself (in .venv-ref, see scripts/setup_reference_env.sh): a random
Hugging Face Llama is imported, continued for a few steps with llmjax-train, and exported; at
each end transformers and llmjax must compute the same fp32 logits, and the exported
tokenizer must load with AutoTokenizer and encode as llmjax's does."""

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from llmjax.data.dataset import check_tokenizer
from llmjax.data.errors import DataError
from llmjax.data.tokenizer import train_tokenizer
from llmjax.interop.export import export_hf
from llmjax.interop.import_hf import import_hf
from llmjax.interop.safetensors_io import SafetensorsReader
from llmjax.rundir import RunDir

from conftest import ROOT, run_reference, run_train
from hf_checkpoints import HF_CONFIG as HAND_WRITTEN, make_hf_dir
from hf_parity import CONTINUE, assert_logits_match, llmjax_logits

HAND_WRITTEN_VOCAB = HAND_WRITTEN["vocab_size"]

pytestmark = pytest.mark.slow

# The `tiny` preset's shape, but untied and with grouped-query attention (2 kv heads for 4).
HF_CONFIG = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                 rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0)
def cli(module, *args):
    return subprocess.run([sys.executable, "-m", f"llmjax.cli.{module}", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def reference_logits(python, directory, tokens, tmp_path):
    np.save(tmp_path / "tokens.npy", tokens)
    run_reference(python, "logits", directory, tmp_path / "tokens.npy", tmp_path / "logits.npy")
    return np.load(tmp_path / "logits.npy")


@pytest.fixture(scope="module")
def imported(reference_python, tmp_path_factory):
    """(tmp dir, HF dir, imported run dir, corpus cache): a random transformers Llama with a
    BPE tokenizer of its own (not the one llmjax would train on the data), imported with the
    CLI."""
    tmp = tmp_path_factory.mktemp("hf")
    hf_dir = tmp / "hf"
    run_reference(reference_python, "make", hf_dir, json.dumps(HF_CONFIG), 0)
    texts = ["import json\nclass Encoder:\n    def encode(self, o):\n        return json.dumps(o)\n"]
    train_tokenizer(texts * 20, HF_CONFIG["vocab_size"], hf_dir / "tokenizer.json")
    result = cli("import_hf", f"--hf={hf_dir}", f"--workdir={tmp / 'imported'}")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, hf_dir, tmp / "imported", tmp / "cache"


def random_tokens(seed=0, shape=(3, 24), vocab=HF_CONFIG["vocab_size"]):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def test_imported_model_computes_the_logits_of_transformers(imported, reference_python):
    tmp, hf_dir, run, _ = imported
    tokens = random_tokens()
    rel = assert_logits_match(llmjax_logits(run, tokens),
                              reference_logits(reference_python, hf_dir, tokens, tmp))
    print(f"imported parity: max |diff| / max |logit| = {rel:.2e}")


def test_export_of_import_is_the_original_checkpoint(imported):
    tmp, hf_dir, run, _ = imported
    result = cli("export", f"--workdir={run}", "--format=hf", f"--out={tmp / 'roundtrip'}")
    assert result.returncode == 0, result.stderr[-3000:]
    source, exported = SafetensorsReader(hf_dir), SafetensorsReader(tmp / "roundtrip")
    assert exported.names() == source.names()
    for name in source.names():
        assert exported.read(name).tobytes() == source.read(name).tobytes(), name
    original = json.loads((hf_dir / "config.json").read_text())
    written = json.loads((tmp / "roundtrip" / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                "pad_token_id", "model_type"):
        assert written[key] == original[key], key


def test_continued_pretraining_and_its_export_match_transformers(imported, reference_python):
    tmp, _, run, cache = imported
    continued = tmp / "continued"
    result = run_train(continued, f"--config.checkpoint.init_from={run}", *CONTINUE,
                       config=f"configs/imported.py:{run}", cache=cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"initialised from {run} step 0 (params only)" in result.stdout
    # The data was tokenized with the imported tokenizer, not a newly trained one.
    assert "training a" not in result.stdout
    losses = [json.loads(line)["loss"] for line in (continued / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(losses).all()

    out = tmp / "exported"
    result = cli("export", f"--workdir={continued}", "--format=hf", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    tokens = random_tokens(1)
    rel = assert_logits_match(llmjax_logits(continued, tokens),
                              reference_logits(reference_python, out, tokens, tmp))
    print(f"exported parity: max |diff| / max |logit| = {rel:.2e}")
    text = "import json\ndef f(x):\n    return json.dumps({'a': [1, 2.5]})\n"
    run_reference(reference_python, "encode", out, text, tmp / "ids.npy")
    assert np.load(tmp / "ids.npy").tolist() == RunDir(continued).tokenizer.encode(text).ids


def test_tied_bfloat16_export_matches_transformers(reference_python, tmp_path):
    """Tied embeddings (no lm_head tensor) and a bf16 export, from a hand-written checkpoint."""
    make_hf_dir(tmp_path / "hf", {"tie_word_embeddings": True, "torch_dtype": "bfloat16"},
                dtype=ml_dtypes.bfloat16)
    import_hf(tmp_path / "hf", tmp_path / "run", log=lambda *_: None)
    export_hf(tmp_path / "run", tmp_path / "out", log=lambda *_: None)
    assert "lm_head.weight" not in SafetensorsReader(tmp_path / "out").names()
    tokens = random_tokens(2, vocab=HAND_WRITTEN_VOCAB)
    # transformers computes in fp32 from the bf16 weights; so does llmjax (float32 params).
    assert_logits_match(llmjax_logits(tmp_path / "run", tokens),
                        reference_logits(reference_python, tmp_path / "out", tokens, tmp_path))


def test_heads_wider_than_the_residual_stream_import_and_export_exactly(reference_python, tmp_path):
    """A head_dim set apart from hidden_size / heads (Mistral-Nemo's 32 heads of 128 on a
    5120-wide stream): 4 heads of 32 on a 64-wide stream."""
    config = HF_CONFIG | {"head_dim": 32}
    run_reference(reference_python, "make", tmp_path / "hf", json.dumps(config), 3)
    train_tokenizer(["def f(x):\n    return x\n"] * 20, config["vocab_size"], tmp_path / "hf" / "tokenizer.json")
    import_hf(tmp_path / "hf", tmp_path / "run", log=lambda *_: None)
    assert RunDir(tmp_path / "run").config.model.head_dim == 32
    tokens = random_tokens(3)
    assert_logits_match(llmjax_logits(tmp_path / "run", tokens),
                        reference_logits(reference_python, tmp_path / "hf", tokens, tmp_path))
    export_hf(tmp_path / "run", tmp_path / "out", log=lambda *_: None)
    source, exported = SafetensorsReader(tmp_path / "hf"), SafetensorsReader(tmp_path / "out")
    assert exported.names() == source.names()
    for name in source.names():
        assert exported.read(name).tobytes() == source.read(name).tobytes(), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["head_dim"] == 32


def test_sample_command_decodes_greedily_like_transformers(imported, reference_python):
    """Two prompts of different lengths in one batch (left padding, KV cache) against
    transformers' generate on each alone."""
    tmp, hf_dir, run, _ = imported
    prompts = ["def ", "import json\nclass Encoder"]
    result = cli("sample", f"--workdir={run}", *(f"--prompt={p}" for p in prompts),
                 "--max_new_tokens=8", "--temperature=0")
    assert result.returncode == 0, result.stderr[-3000:]
    tokenizer, eos = RunDir(run).tokenizer, HF_CONFIG["eos_token_id"]
    run_reference(reference_python, "greedy", hf_dir, 8, tmp / "greedy.json", *prompts)
    for prompt, ids in zip(prompts, json.loads((tmp / "greedy.json").read_text())):
        ids = ids[:ids.index(eos)] if eos in ids else ids
        assert f"=== {prompt!r}\n{prompt}{tokenizer.decode(ids)}\n" in result.stdout + "\n"


def test_training_on_the_imported_directory_itself_is_refused(imported):
    _, _, run, cache = imported
    result = run_train(run, config=f"configs/imported.py:{run}", cache=cache)
    assert result.returncode == 2
    assert f"holds an imported model; train a new run from it with --workdir NEW " \
           f"--config.checkpoint.init_from={run}" in result.stderr


def test_init_from_refuses_data_with_another_tokenizer(imported, tmp_path):
    _, _, run, _ = imported
    other = train_tokenizer(["something else entirely"] * 5, 300, tmp_path / "tokenizer.json")
    with pytest.raises(DataError, match="is not the one the run in .* was trained with"):
        check_tokenizer(run, other)
