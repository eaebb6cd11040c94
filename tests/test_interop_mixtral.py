"""Mixtral against transformers itself (in .venv-ref): a random Hugging Face
MixtralForCausalLM (random norms, routers far from uniform) is imported into the Llama family's
MoE variant and must compute transformers' fp32 logits and greedy continuations; an MoE model
trained by llmjax is exported and must load in transformers with the same logits; MoE layouts
Mixtral cannot express are refused."""

import json
import subprocess

import pytest

from llmjax.checkpoint import restore_params
from llmjax.data.tokenizer import train_tokenizer
from llmjax.interop.export import export_hf
from llmjax.interop.import_hf import import_hf
from llmjax.interop.safetensors_io import SafetensorsReader
from llmjax.interop.tensor_map import InteropError
from llmjax.model.llama import hf as llama_hf
from llmjax.rundir import RunDir
from llmjax.sample.generate import Settings, generate
from llmjax.sample.select import Sampling

from conftest import ROOT, make_tiny_config, train_command, train_env
from hf_parity import (CONTINUE, QUIET, assert_logits_match, llmjax_logits, random_tokens, reference_logits,
                       until_end)

pytestmark = pytest.mark.slow

HF_CONFIG = dict(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                 max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
TEXTS = ["import json\nclass Encoder:\n    def encode(self, o):\n        return json.dumps(o)\n"] * 20
PROMPTS = [[5, 17, 33, 8, 90, 4, 61], [200, 3, 77]]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def mixtral(reference_python, tmp_path_factory):
    """{"imported": a random transformers Mixtral imported with import_hf, "trained": a
    configs/moe_tiny.py run exported to HF}, each with random token rows and transformers'
    logits on them; "greedy": transformers' greedy continuations of PROMPTS by the imported model."""
    tmp = tmp_path_factory.mktemp("mixtral")
    trained = dict(run=tmp / "trained" / "run", hf=tmp / "trained" / "hf")
    training = subprocess.Popen(train_command(trained["run"], *CONTINUE, config="configs/moe_tiny.py"),
                                cwd=ROOT, env=train_env(tmp / "cache"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    imported = dict(hf=tmp / "imported" / "hf", run=tmp / "imported" / "run",
                    tokens=random_tokens(0, HF_CONFIG["vocab_size"]))
    imported["hf"].mkdir(parents=True)
    train_tokenizer(TEXTS, HF_CONFIG["vocab_size"], imported["hf"] / "tokenizer.json")
    (tmp / "prompts.json").write_text(json.dumps(PROMPTS))
    commands = [["make-mixtral", imported["hf"], json.dumps(HF_CONFIG), 0],
                ["generate", imported["hf"], NEW_TOKENS, 1, 1.0, json.dumps([HF_CONFIG["eos_token_id"]]),
                 tmp / "prompts.json", tmp / "greedy.json"]]
    _, stderr = training.communicate(timeout=600)
    assert training.returncode == 0, stderr[-3000:]
    export_hf(trained["run"], trained["hf"], **QUIET)
    trained["tokens"] = random_tokens(1, RunDir(trained["run"]).config.model.vocab_size)
    models = {"imported": imported, "trained": trained}
    reference_logits(reference_python, tmp, commands, models)
    import_hf(imported["hf"], imported["run"], **QUIET)
    return models | {"greedy": json.loads((tmp / "greedy.json").read_text())}


def test_imported_mixtral_computes_the_logits_of_transformers(mixtral):
    m = mixtral["imported"]
    config = RunDir(m["run"]).config
    assert (config.model.num_experts, config.model.experts_per_token, config.model.expert_mlp_dim) == (4, 2, 96)
    rel = assert_logits_match(llmjax_logits(m["run"], m["tokens"]), m["logits"])
    print(f"imported Mixtral parity: max |diff| / max |logit| = {rel:.2e}")


def test_trained_moe_export_loads_in_transformers_with_its_logits(mixtral):
    m = mixtral["trained"]
    written = json.loads((m["hf"] / "config.json").read_text())
    assert written["architectures"] == ["MixtralForCausalLM"] and written["num_local_experts"] == 4
    rel = assert_logits_match(llmjax_logits(m["run"], m["tokens"]), m["logits"])
    print(f"exported Mixtral parity: max |diff| / max |logit| = {rel:.2e}")


def test_export_of_import_is_the_original_checkpoint(mixtral, tmp_path):
    m = mixtral["imported"]
    export_hf(m["run"], tmp_path / "out", **QUIET)
    source, exported = SafetensorsReader(m["hf"]), SafetensorsReader(tmp_path / "out")
    assert exported.names() == source.names()
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in source.names()
    for name in source.names():
        assert exported.read(name).tobytes() == source.read(name).tobytes(), name


def test_cached_greedy_decoding_matches_transformers(mixtral):
    """Both prompts in one left-padded batch through llmjax's KV cache (dropless MoE)."""
    m = mixtral["imported"]
    config = RunDir(m["run"]).config
    config.model.dtype = "float32"
    params = restore_params(m["run"], config, 0)
    eos = [HF_CONFIG["eos_token_id"]]
    out = generate(params, config, PROMPTS, Settings(max_new_tokens=NEW_TOKENS, sampling=Sampling(temperature=0.0)),
                   eos_ids=tuple(eos), pad_id=HF_CONFIG["pad_token_id"])["tokens"].tolist()
    assert [until_end(tokens, eos) for tokens in out] == mixtral["greedy"]


@pytest.mark.parametrize("changes, field", [(dict(moe_every=2), "moe_every"), (dict(shared_experts=1), "shared_experts"),
                                             (dict(router="softmax_topk"), "router")])
def test_moe_layouts_mixtral_cannot_express_are_refused(changes, field):
    config = make_tiny_config("moe", **changes)
    with pytest.raises(InteropError, match=field):
        llama_hf.hf_config(config.model, "float32", {})


def test_mixtral_configs_llmjax_would_not_reproduce_are_refused():
    for changes, field in [({"sliding_window": 16}, "sliding_window"), ({"router_jitter_noise": 0.1}, "router_jitter"),
                           ({"num_local_experts": None}, "num_local_experts")]:
        hf = {k: v for k, v in (HF_CONFIG | {"model_type": "mixtral"} | changes).items() if v is not None}
        with pytest.raises(InteropError, match=field):
            llama_hf.model_overrides(hf)
