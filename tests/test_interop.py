"""Hugging Face import/export on hand-written safetensors checkpoints (no torch): exact round
trips, sharding, refusal of bad input before anything is written, and bounded memory."""

import json
import shutil
import subprocess
import sys
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from llmjax.errors import LlmjaxError
from llmjax.interop.export import export_hf
from llmjax.interop.run_files import special_ids
from llmjax.rundir import RunDir
from llmjax.interop.import_hf import import_hf
from llmjax.interop.tensor_map import InteropError
from llmjax.model.llama.hf import model_overrides
from llmjax.interop.safetensors_io import INDEX_FILE, SafetensorsReader

from conftest import ROOT
from hf_checkpoints import HF_CONFIG, make_hf_dir

def assert_same_tensors(directory, tensors):
    reader = SafetensorsReader(directory)
    assert reader.names() == set(tensors)
    for name, array in tensors.items():
        got = reader.read(name)
        assert got.dtype == array.dtype and got.tobytes() == array.tobytes(), name


@pytest.mark.parametrize("dtype, overrides", [
    (np.float32, {}),
    (ml_dtypes.bfloat16, {"tie_word_embeddings": True, "num_key_value_heads": 4,
                          "torch_dtype": "bfloat16"}),
])
def test_export_of_import_reproduces_the_checkpoint_exactly(tmp_path, dtype, overrides):
    tensors = make_hf_dir(tmp_path / "hf", overrides, dtype)
    import_hf(tmp_path / "hf", tmp_path / "run", log=lambda *_: None)
    export_hf(tmp_path / "run", tmp_path / "out", log=lambda *_: None)
    assert_same_tensors(tmp_path / "out", tensors)
    source = json.loads((tmp_path / "hf" / "config.json").read_text())
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    for key, value in source.items():
        assert exported[key] == value, key
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == \
        (tmp_path / "hf" / "tokenizer.json").read_bytes()


def test_large_exports_are_sharded_with_an_index(tmp_path):
    tensors = make_hf_dir(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "run", log=lambda *_: None)
    export_hf(tmp_path / "run", tmp_path / "out", max_shard_bytes=40_000, log=lambda *_: None)
    index = json.loads((tmp_path / "out" / INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert not (tmp_path / "out" / "model.safetensors").exists()
    for file in files:
        size = (tmp_path / "out" / file).stat().st_size
        assert size < 40_000 + 30_000  # One tensor may overflow; the biggest is 38 KB.
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in tensors.values())
    assert_same_tensors(tmp_path / "out", tensors)
    # Exporting the same thing again replaces it; anything else in the way is refused, and so
    # is replacing an export beside which a user put files of their own (never deleted).
    export_hf(tmp_path / "run", tmp_path / "out", max_shard_bytes=40_000, log=lambda *_: None)
    with pytest.raises(InteropError, match="not empty and does not hold this export"):
        export_hf(tmp_path / "run", tmp_path / "out", dtype="bfloat16", log=lambda *_: None)
    (tmp_path / "out" / "README.md").write_text("model card\n")
    (tmp_path / "out" / "model-finetuned.safetensors").write_text("a user's own weights\n")
    with pytest.raises(InteropError, match="holds this export and also README.md, model-finetuned.safetensors, "
                                           "which the export did not write"):
        export_hf(tmp_path / "run", tmp_path / "out", max_shard_bytes=40_000, log=lambda *_: None)
    assert (tmp_path / "out" / "README.md").read_text() == "model card\n"


@pytest.mark.parametrize("make_kwargs, message", [
    (dict(config={"model_type": "mamba"}), "model_type is 'mamba'; llmjax imports 'llama'"),
    (dict(config={"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}), "rope type 'llama3'"),
    (dict(config={"attention_bias": True}), "attention_bias=True is not supported"),
    (dict(drop=("model.layers.1.mlp.up_proj.weight",)),
     "tensor model.layers.1.mlp.up_proj.weight is missing"),
    (dict(reshape={"model.layers.0.self_attn.k_proj.weight": (32, 32)}),
     r"tensor model.layers.0.self_attn.k_proj.weight: shape \(32, 32\) does not match \(16, 32\)"),
])
def test_bad_checkpoints_are_refused_before_anything_is_written(tmp_path, make_kwargs, message):
    make_hf_dir(tmp_path / "hf", **make_kwargs)
    with pytest.raises(InteropError, match=message):
        import_hf(tmp_path / "hf", tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def _truncate(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.parametrize("damage, message", [
    (lambda hf: (hf / "config.json").write_text("{"), r"config.json is not valid JSON"),
    (lambda hf: _truncate(hf / "model.safetensors"), r"model.safetensors cannot be read as safetensors"),
    (lambda hf: (hf / "tokenizer.json").write_text("{}"), r"hf/tokenizer.json cannot be read"),
])
def test_damaged_files_are_refused_by_name_before_anything_is_written(tmp_path, damage, message):
    make_hf_dir(tmp_path / "hf")
    damage(tmp_path / "hf")
    with pytest.raises(LlmjaxError, match=message):
        import_hf(tmp_path / "hf", tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_tokenizer_with_ids_beyond_the_embedding_is_refused(tmp_path):
    """Ids past the model's vocabulary would index no embedding row: garbage, silently."""
    make_hf_dir(tmp_path / "hf", {"vocab_size": 200})  # Byte-level BPE: at least 256 + 3 tokens.
    with pytest.raises(InteropError, match=r"tokenizer.json has 2\d\d tokens, more than the model's 200 embeddings"):
        import_hf(tmp_path / "hf", tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_special_tokens_of_a_tokenizer_without_its_config_are_kept_by_id(tmp_path):
    """A model directory with tokenizer.json only, its specials named <s> </s> <pad>: the import
    names them in a tokenizer_config.json of its own, so exports, and runs trained from the
    import, know them; without it, a run's end of document is the id its data was split at."""
    make_hf_dir(tmp_path / "hf", {"pad_token_id": 0})
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(["def f(x):\n    return x + 1\n"] * 20, trainers.BpeTrainer(
        vocab_size=290, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.save(str(tmp_path / "hf" / "tokenizer.json"))
    import_hf(tmp_path / "hf", tmp_path / "run", log=lambda *_: None)
    names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    assert json.loads((tmp_path / "run" / "tokenizer_config.json").read_text()).items() >= names.items()
    export_hf(tmp_path / "run", tmp_path / "out", log=lambda *_: None)
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text()).items() >= names.items()
    # A run continued from the import (its data tokenized by the import's tokenizer).
    continued = RunDir(tmp_path / "continued")
    continued.path.mkdir()
    continued.write_config(RunDir(tmp_path / "run").config)
    shutil.copyfile(tmp_path / "run" / "tokenizer.json", continued.path / "tokenizer.json")
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    assert special_ids(continued) == ids
    (tmp_path / "run" / "tokenizer_config.json").unlink()  # An import made before it wrote one.
    assert special_ids(RunDir(continued.path))["eos_token_id"] == 2


def test_import_command_prints_one_clear_line(tmp_path):
    make_hf_dir(tmp_path / "hf", drop=("model.norm.weight",))
    result = subprocess.run([sys.executable, "-m", "llmjax.cli.import_hf", f"--hf={tmp_path / 'hf'}",
                             f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip() == "error: tensor model.norm.weight is missing from the checkpoint."
    assert not (tmp_path / "run").exists()


def test_import_streams_tensor_by_tensor(tmp_path):
    """numpy's allocations during an import stay near the largest tensor, far below the model."""
    config = {"vocab_size": 1024, "hidden_size": 128, "intermediate_size": 512,
              "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 4}
    tensors = make_hf_dir(tmp_path / "hf", config)
    model_bytes = sum(a.nbytes for a in tensors.values())
    largest = max(a.nbytes for a in tensors.values())
    del tensors
    tracemalloc.start()
    import_hf(tmp_path / "hf", tmp_path / "run", log=lambda *_: None)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert model_bytes > 8 * largest  # The model is many tensors ...
    assert peak < 3 * largest, (peak, largest, model_bytes)  # ... memory is a few of them.


def test_an_incomplete_config_names_what_it_lacks():
    config = {k: v for k, v in HF_CONFIG.items() if k not in ("intermediate_size", "rms_norm_eps")}
    with pytest.raises(InteropError, match="config.json: lacks intermediate_size, rms_norm_eps"):
        model_overrides(config)
