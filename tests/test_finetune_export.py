"""Exporting a LoRA fine-tuning run: the merged model, and the adapter in PEFT's format with the
model it adapts (`base/`). Real `llmjax-train` LoRA runs (Llama, and GPT-2 whose Conv1D weights
are stored [in, out]) are exported; in .venv-ref, PEFT loads the adapter onto `base/` and must
compute llmjax's fp32 logits of the run, and those of the merged export in transformers. The
adapter's HF row and column orders are checked for every family without torch: PEFT's
(alpha / r) lora_B @ lora_A is the family's HF form of llmjax's update."""

import json
import subprocess

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from llmjax.finetune import lora
from llmjax.interop import adapters, peft_export
from llmjax.interop.export import ADAPTER, BASE, export_hf
from llmjax.rundir import RunDir
from llmjax.run import abstract_params

from conftest import ROOT, make_tiny_config, train_command, train_env
from hf_parity import CONTINUE, QUIET, assert_logits_match, llmjax_logits, random_tokens, reference_logits

# Targets that cover each layout: a kernel with head axes out (query, c_attn), one with them in
# (out: o_proj, attn.c_proj, which must not catch GPT-2's mlp.c_proj), grouped-query values
# (fewer outputs than queries) and an MLP projection.
RUNS = {"llama": ("configs/tiny.py", "query,value,out,down"), "gpt2": ("configs/gpt2_tiny.py", "qkv,out")}
# A learning rate at which four steps move the adapters' B (zero at the start) well away from zero.
LORA = ("--config.finetune.lora_rank=4", "--config.finetune.lora_alpha=8", "--config.optimizer.learning_rate=0.05")


@pytest.fixture(scope="module")
def exported(reference_python, tmp_path_factory):
    """Each family of RUNS: {"run", "hf", "tokens", "logits", "peft", "base"}: a LoRA run of
    llmjax-train, its export, and transformers' fp32 logits on random tokens of the merged
    export, of base/ with PEFT's adapter, and of base/ alone (one reference process)."""
    tmp = tmp_path_factory.mktemp("finetune_export")

    def train_each(args_of) -> None:
        """One llmjax-train per family of RUNS at once, each with `args_of(family)`."""
        training = {family: subprocess.Popen(
            train_command(tmp / family / name, *args, config=RUNS[family][0]), cwd=ROOT, env=train_env(tmp / "cache"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for family in RUNS
            for name, args in [args_of(family)]}
        for process in training.values():
            _, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stderr[-3000:]

    train_each(lambda family: ("pretrained", CONTINUE))  # LoRA adapts a pretrained model.
    train_each(lambda family: ("run", (*CONTINUE, *LORA, f"--config.finetune.lora_targets={RUNS[family][1]}",
                                       f"--config.checkpoint.init_from={tmp / family / 'pretrained'}")))
    models, commands = {}, []
    for family in RUNS:
        m = models[family] = dict(run=tmp / family / "run", hf=tmp / family / "hf")
        export_hf(m["run"], m["hf"], **QUIET)
        m["tokens"] = random_tokens(3, RunDir(m["run"]).config.model.vocab_size)
        np.save(tmp / family / "tokens.npy", m["tokens"])
        commands += [["peft", m["hf"] / BASE, m["hf"] / ADAPTER, tmp / family / "tokens.npy", tmp / family / "peft.npy"],
                     ["logits", m["hf"] / BASE, tmp / family / "tokens.npy", tmp / family / "base.npy"]]
    reference_logits(reference_python, tmp, commands, models)
    for family, m in models.items():
        m["peft"], m["base"] = np.load(tmp / family / "peft.npy"), np.load(tmp / family / "base.npy")
    return models


@pytest.mark.slow
@pytest.mark.parametrize("family", RUNS)
def test_peft_adapter_on_base_computes_the_fine_tuned_model(exported, family):
    m = exported[family]
    ours = llmjax_logits(m["run"], m["tokens"])
    rel_peft = assert_logits_match(ours, m["peft"])
    rel_merged = assert_logits_match(ours, m["logits"])
    assert_logits_match(m["peft"], m["logits"])
    # The adapters matter: without them the logits are far from the fine-tuned ones.
    assert np.abs(m["base"] - ours).max() / np.abs(ours).max() > 1e-2
    print(f"{family}: PEFT vs llmjax {rel_peft:.1e}, merged export vs llmjax {rel_merged:.1e}")


@pytest.mark.slow
def test_adapter_files_name_the_targets_in_peft_terms(exported):
    config = {family: json.loads((exported[family]["hf"] / ADAPTER / peft_export.CONFIG_FILE).read_text())
              for family in RUNS}
    assert config["llama"]["target_modules"] == ["down_proj", "o_proj", "q_proj", "v_proj"]
    assert config["gpt2"]["target_modules"] == ["attn.c_proj", "c_attn"]
    assert [config[f]["fan_in_fan_out"] for f in RUNS] == [False, True]
    assert all(c["task_type"] == "CAUSAL_LM" and c["r"] == 4 and c["lora_alpha"] == 8 for c in config.values())
    model = RunDir(exported["llama"]["run"]).config.model
    tensors = load_file(exported["llama"]["hf"] / ADAPTER / peft_export.WEIGHTS_FILE)
    shapes = {name.removeprefix("base_model.model.model.layers.1.self_attn."): value.shape
              for name, value in tensors.items() if ".layers.1.self_attn." in name}
    assert shapes == {"q_proj.lora_A.weight": (4, model.d_model),
                      "q_proj.lora_B.weight": (model.num_heads * model.head_dim, 4),
                      "v_proj.lora_A.weight": (4, model.d_model),
                      "v_proj.lora_B.weight": (model.num_kv_heads * model.head_dim, 4),
                      "o_proj.lora_A.weight": (4, model.num_heads * model.head_dim),
                      "o_proj.lora_B.weight": (model.d_model, 4)}
    assert model.num_kv_heads < model.num_heads  # Grouped-query attention: v_proj is the narrower.


# Every projection of each family, and PEFT's target_modules for them.
FAMILY_TARGETS = {
    "llama": ("query,key,value,out,gate,up,down",
              ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
    "gpt2": ("qkv,out,fc,proj", ["c_attn", "c_fc", "c_proj"]),
    "bert": ("query,value,out", ["attention.output.dense", "query", "value"]),  # Not output.dense: the MLP's.
    "t5": ("q,v,o,wo", ["o", "q", "v", "wo"]),  # Self- and cross-attention alike.
}


@pytest.mark.parametrize("family", FAMILY_TARGETS)
def test_peft_update_is_the_hf_form_of_llmjax_update(family):
    """For random adapters, PEFT's (alpha / r) lora_B @ lora_A (transposed when
    fan_in_fan_out) of each adapted HF weight equals the family's tensor map applied to
    llmjax's (alpha / r) A B: the same rows and columns, whatever the heads or layouts."""
    targets, modules = FAMILY_TARGETS[family]
    config = make_tiny_config(family)
    config.finetune.update(lora_rank=3, lora_alpha=6.0, lora_targets=targets)
    rng = np.random.default_rng(0)
    adapters_ = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32),
                             abstract_params(config)[0]["lora"])
    maps = adapters.for_config(config).tensor_maps(config.model)
    found = peft_export.adapted_maps(maps, adapters_)
    assert len(found) == sum(a.shape[0] for a in jax.tree.leaves(adapters_)) // 2  # One per layer of each.
    assert peft_export.target_modules(maps, [m for m, _ in found]) == modules
    for m, pair in found:
        lora_a, lora_b = peft_export.lora_weights(m, pair)
        update = 2.0 * lora_b @ lora_a
        ours = np.asarray(lora.delta(pair["a"][m.layer], pair["b"][m.layer], m.llmjax_shape, 2.0))
        np.testing.assert_allclose(update if m.transpose else update.T, m.to_hf(ours), rtol=1e-5, atol=1e-5,
                                   err_msg=m.hf_name)
