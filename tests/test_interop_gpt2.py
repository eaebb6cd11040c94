"""GPT-2 against transformers itself (in .venv-ref, see scripts/setup_reference_env.sh): random
Hugging Face GPT2LMHeadModels (random LayerNorms and biases, so a misplaced one shows) are
imported and must compute transformers' fp32 logits and greedy continuations; a GPT-2 trained by
llmjax is exported and must load in transformers with the same logits and tokenizer; configs
llmjax would not reproduce, and checkpoints that do not fit theirs, are refused before anything
is written."""

import json
import shutil
import subprocess

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from llmjax import model
from llmjax.checkpoint import restore_params
from llmjax.data.tokenizer import train_tokenizer
from llmjax.interop.export import export_hf
from llmjax.interop.import_hf import import_hf
from llmjax.interop.safetensors_io import SafetensorsReader
from llmjax.interop.tensor_map import InteropError
from llmjax.model.gpt2 import hf as gpt2_hf
from llmjax.rundir import RunDir
from llmjax.sample.generate import Settings, generate
from llmjax.sample.select import Sampling

from conftest import ROOT, train_command, train_env
from hf_parity import NEW_TOKENS as GENERATED
from hf_parity import (CONTINUE, QUIET, assert_config_refused_before_writing, assert_logits_match,
                       generation_commands, generation_inputs, llmjax_logits, random_tokens, read_generated,
                       reference_logits, until_end)

pytestmark = pytest.mark.slow

# Weights 10x GPT-2's initial scale: with the default one, the random biases outweigh tokens
# and positions, and greedy decoding repeats one token whatever the prompt.
HF_CONFIG = dict(vocab_size=384, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                 initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# Tied with n_inner unset (4 x n_embd), and untied with its own MLP width.
VARIANTS = {"tied": {}, "untied": dict(tie_word_embeddings=False, n_inner=128)}
TEXTS = ["import json\nclass Encoder:\n    def encode(self, o):\n        return json.dumps(o)\n"] * 20
PROMPTS = ["def ", "import json\nclass Encoder"]
TEXT = "import json\ndef f(x):\n    return json.dumps({'a': [1, 2.5]})\n"
NEW_TOKENS = 8
EOS = HF_CONFIG["eos_token_id"]


@pytest.fixture(scope="module")
def gpt2(reference_python, tmp_path_factory):
    """What needs other processes, made once. Each VARIANT: {"hf", "run", "tokens", "logits"},
    a random transformers GPT-2 with a BPE tokenizer of its own, imported with import_hf, and
    transformers' fp32 logits on random tokens. "trained": the same for a gpt2-tiny run of
    llmjax-train exported to "hf", plus "ids", transformers' encoding of TEXT. "greedy": what
    generate adds to PROMPTS with the tied model. All of transformers' side runs in one process
    (importing its models takes seconds)."""
    tmp = tmp_path_factory.mktemp("gpt2")
    trained = dict(run=tmp / "trained" / "run", hf=tmp / "trained" / "hf")
    training = subprocess.Popen(  # Runs while the Hugging Face models are prepared.
        train_command(trained["run"], *CONTINUE, config="configs/gpt2_tiny.py"), cwd=ROOT,
        env=train_env(tmp / "cache"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    models, commands = {}, []
    for seed, (variant, changes) in enumerate(VARIANTS.items()):
        hf_dir = tmp / variant / "hf"
        hf_dir.mkdir(parents=True)
        train_tokenizer(TEXTS, HF_CONFIG["vocab_size"], hf_dir / "tokenizer.json")
        models[variant] = dict(hf=hf_dir, run=tmp / variant / "run",
                               tokens=random_tokens(seed, HF_CONFIG["vocab_size"]))
        commands.append(["make-gpt2", hf_dir, json.dumps(HF_CONFIG | changes), seed])
    commands.append(["greedy", models["tied"]["hf"], NEW_TOKENS, tmp / "greedy.json", *PROMPTS])
    # Beam search with 40 end tokens, so that beams end at different lengths.
    models["tied"]["inputs"] = generation_inputs(5, HF_CONFIG["vocab_size"])
    commands += generation_commands(models["tied"], tmp / "tied", list(range(1, 41)))
    _, stderr = training.communicate(timeout=600)
    assert training.returncode == 0, stderr[-3000:]
    export_hf(trained["run"], trained["hf"], **QUIET)
    trained["tokens"] = random_tokens(2, RunDir(trained["run"]).config.model.vocab_size)
    commands.append(["encode", trained["hf"], TEXT, tmp / "trained" / "ids.npy"])
    everything = models | {"trained": trained}
    reference_logits(reference_python, tmp, commands, everything)
    for m in models.values():
        import_hf(m["hf"], m["run"], **QUIET)
    trained["ids"] = np.load(tmp / "trained" / "ids.npy").tolist()
    read_generated(models["tied"], tmp / "tied")
    return everything | {"greedy": json.loads((tmp / "greedy.json").read_text())}


@pytest.mark.parametrize("variant", VARIANTS)
def test_imported_gpt2_computes_the_logits_of_transformers(gpt2, variant):
    m = gpt2[variant]
    rel = assert_logits_match(llmjax_logits(m["run"], m["tokens"]), m["logits"])
    print(f"{variant} imported parity: max |diff| / max |logit| = {rel:.2e}")


def params_from_hf(hf_dir, model_config):
    """The params tree of an unrolled model (one leaf per tensor), straight from the adapter's maps."""
    reader, params = SafetensorsReader(hf_dir), {}
    for m in gpt2_hf.tensor_maps(model_config):
        node = params
        for key in m.path[:-1]:
            node = node.setdefault(key, {})
        node[m.path[-1]] = np.empty(m.llmjax_shape, np.float32)
        m.copy_to_llmjax(reader.read(m.hf_name), node[m.path[-1]])
    return params


@pytest.mark.parametrize("variant", VARIANTS)
def test_unrolled_layers_map_to_the_same_model(gpt2, variant):
    m = gpt2[variant]
    config = RunDir(m["run"]).config
    config.model.update(scan_layers=False, dtype="float32")
    params = params_from_hf(m["hf"], config.model)
    expected = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), config)))
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, expected)
    assert_logits_match(np.asarray(model.apply(params, m["tokens"], config=config)), m["logits"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_of_import_is_the_original_checkpoint(gpt2, variant, tmp_path):
    m = gpt2[variant]
    export_hf(m["run"], tmp_path / "out", **QUIET)
    source, exported = SafetensorsReader(m["hf"]), SafetensorsReader(tmp_path / "out")
    assert exported.names() == source.names()
    for name in source.names():
        assert exported.read(name).tobytes() == source.read(name).tobytes(), name
    original = json.loads((m["hf"] / "config.json").read_text())
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    for key in ("model_type", "vocab_size", "n_embd", "n_layer", "n_head", "n_positions",
                "layer_norm_epsilon", "tie_word_embeddings", "activation_function",
                "bos_token_id", "eos_token_id", "pad_token_id"):
        assert written[key] == original[key], key
    assert written["n_inner"] == (original["n_inner"] or 4 * original["n_embd"])


def test_trained_gpt2_export_loads_in_transformers_with_its_logits_and_tokenizer(gpt2):
    m = gpt2["trained"]
    assert "lm_head.weight" not in SafetensorsReader(m["hf"]).names()  # gpt2-tiny is tied.
    rel = assert_logits_match(llmjax_logits(m["run"], m["tokens"]), m["logits"])
    print(f"exported parity: max |diff| / max |logit| = {rel:.2e}")
    assert m["ids"] == RunDir(m["run"]).tokenizer.encode(TEXT).ids


def test_greedy_generation_matches_transformers(gpt2):
    """Both prompts in one left-padded batch (positions from the mask, KV cache) against
    transformers' generate on each alone, which stops after EOS."""
    run = RunDir(gpt2["tied"]["run"])
    config = run.config
    config.model.dtype = "float32"
    prompts = [run.tokenizer.encode(p).ids for p in PROMPTS]
    out = generate(restore_params(run.path, config, 0), config, prompts,
                   Settings(max_new_tokens=NEW_TOKENS, sampling=Sampling(temperature=0.0)),
                   eos_ids=(), pad_id=HF_CONFIG["pad_token_id"])["tokens"].tolist()
    ours = [ids[:ids.index(EOS) + 1] if EOS in ids else ids for ids in out]
    assert ours == gpt2["greedy"]


def test_greedy_and_beam_search_give_the_sequences_of_transformers(gpt2):
    """Prompts of several lengths in one left-padded batch, against transformers' generate on
    each alone, greedy and with beam search under length penalties."""
    m = gpt2["tied"]
    config = RunDir(m["run"]).config
    config.model.dtype = "float32"
    params = restore_params(m["run"], config, 0)
    for (beams, penalty), theirs in m["generated"].items():
        settings = Settings(max_new_tokens=GENERATED, num_beams=beams, length_penalty=penalty,
                            sampling=Sampling(temperature=0.0))
        out = generate(params, config, m["inputs"], settings, eos_ids=tuple(m["eos"]),
                       pad_id=HF_CONFIG["pad_token_id"])["tokens"].tolist()
        assert [until_end(tokens, m["eos"]) for tokens in out] == theirs, (beams, penalty)
    generated = m["generated"]  # The settings change the answer: the test sees the length penalty.
    assert generated[(1, 1.0)] != generated[(5, 1.0)] != generated[(5, 0.0)]


@pytest.mark.parametrize("changes, field", [
    (dict(activation_function="relu"), "activation_function"),
    (dict(activation_function="gelu"), "activation_function"),  # The exact erf GELU.
    (dict(scale_attn_weights=False), "scale_attn_weights"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(add_cross_attention=True), "add_cross_attention"),
    (dict(n_head=5), "n_head"),
    (dict(n_embd=None), "n_embd"),
])
def test_unsupported_configs_are_refused_before_anything_is_written(gpt2, tmp_path, changes, field):
    assert_config_refused_before_writing(gpt2["tied"]["hf"], changes, field, tmp_path)


def copy_hf(source, target, drop=(), add=None):
    """`source` with tensors dropped from or added to its checkpoint."""
    shutil.copytree(source, target)
    reader = SafetensorsReader(source)
    tensors = {name: reader.read(name) for name in reader.names() if name not in drop}
    save_file(tensors | (add or {}), str(target / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("drop, add, message", [
    (("transformer.h.1.mlp.c_fc.bias",), None, "tensor transformer.h.1.mlp.c_fc.bias is missing"),
    ((), {"transformer.h.0.crossattention.c_attn.weight": np.zeros((64, 128), np.float32)},
     "tensor transformer.h.0.crossattention.c_attn.weight is not part of a gpt2 model"),
])
def test_a_checkpoint_that_does_not_fit_its_config_is_refused_before_anything_is_written(
        gpt2, tmp_path, drop, add, message):
    copy_hf(gpt2["tied"]["hf"], tmp_path / "hf", drop, add)
    with pytest.raises(InteropError, match=message):
        import_hf(tmp_path / "hf", tmp_path / "run", **QUIET)
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_old_mask_buffers_and_a_stored_tied_head_are_accepted(gpt2, tmp_path):
    m = gpt2["tied"]
    length = HF_CONFIG["n_positions"]
    buffers = {f"transformer.h.{i}.attn.{name}": value for i in range(HF_CONFIG["n_layer"])
               for name, value in (("bias", np.tril(np.ones((1, 1, length, length), np.float32))),
                                   ("masked_bias", np.array(-1e4, np.float32)))}
    embedding = SafetensorsReader(m["hf"]).read("transformer.wte.weight")
    copy_hf(m["hf"], tmp_path / "hf", add=buffers | {"lm_head.weight": embedding})
    import_hf(tmp_path / "hf", tmp_path / "run", **QUIET)
    assert_logits_match(llmjax_logits(tmp_path / "run", m["tokens"]), m["logits"])


def test_generic_field_names_and_other_tanh_gelus_read_as_gpt2s_own():
    """GPT2Config also takes hidden_size etc. (its attribute_map), and every transformers
    activation of the tanh-approximated GELU is one function."""
    own = gpt2_hf.model_overrides(dict(HF_CONFIG, model_type="gpt2"))
    generic = dict(vocab_size=384, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=64, activation_function="gelu_pytorch_tanh")
    assert gpt2_hf.model_overrides(generic) == own


def test_a_checkpoint_saved_from_the_base_model_imports_the_same(gpt2, tmp_path):
    """GPT2Model's checkpoints name tensors without the LM head model's "transformer." prefix."""
    m = gpt2["tied"]
    base = tmp_path / "base"
    shutil.copytree(m["hf"], base)
    reader = SafetensorsReader(m["hf"])
    (base / "model.safetensors").unlink()
    save_file({name.removeprefix("transformer."): reader.read(name) for name in reader.names()},
              str(base / "model.safetensors"))
    import_hf(base, tmp_path / "run", **QUIET)
    assert_logits_match(llmjax_logits(tmp_path / "run", m["tokens"]), m["logits"])
