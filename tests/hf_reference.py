"""Runs under .venv-ref (torch + transformers), never in the llmjax environment: the
independent reference for interop tests.

  make DIR CONFIG_JSON SEED       a random LlamaForCausalLM saved with save_pretrained
  make-gpt2 DIR CONFIG_JSON SEED  a random GPT2LMHeadModel saved with save_pretrained
  make-mixtral DIR CONFIG_JSON SEED  a random MixtralForCausalLM saved with save_pretrained
  make-bert DIR CONFIG_JSON SEED  a random BertForMaskedLM saved with save_pretrained
  make-t5 DIR CONFIG_JSON SEED    a random T5ForConditionalGeneration saved with save_pretrained
  logits DIR TOKENS.npy OUT.npy   fp32 logits of DIR on the token rows (its LM head: causal or
                                  masked; an encoder-decoder's TOKENS are [2, B, T]: encoder
                                  inputs, then decoder inputs, and the logits the decoder's)
  generate DIR N BEAMS PENALTY EOS_JSON TOKENS.json OUT.json
                                  the new tokens model.generate gives for each row of TOKENS (a
                                  prompt, or an encoder-decoder's inputs; the decoder start token
                                  left out), with at most N new tokens, BEAMS beams (1: greedy),
                                  length penalty PENALTY and the end tokens of EOS_JSON (a list)
  peft BASE ADAPTER TOKENS.npy OUT.npy
                                  fp32 logits (as `logits`) of the model of directory BASE with
                                  the PEFT adapter of directory ADAPTER
                                  (`peft.PeftModel.from_pretrained`), after checking that every
                                  tensor of the adapter's file was loaded, none was missing, and
                                  that its config names BASE as its base model
  encode DIR TEXT OUT.npy         AutoTokenizer(DIR) ids of TEXT
  greedy DIR N OUT.json TEXT...   the N tokens model.generate adds to each TEXT, greedily
  lstm IN.npz OUT.npy             torch.nn.LSTM's outputs [B, T, out] of IN's inputs "x" with
                                  IN's weights (torch's names: weight_ih_l0, ...)
  batch COMMANDS_JSON             each [command, arg, ...] of the list in turn, in this one
                                  process (importing transformers' models takes seconds)
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # Everything is local; a hub lookup would be a bug.

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402


def make(directory, config_json, seed):
    torch.manual_seed(int(seed))
    config = transformers.LlamaConfig(**json.loads(config_json))
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():  # Norm weights start at 1; random ones catch a misplaced norm.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(directory, safe_serialization=True)


def make_mixtral(directory, config_json, seed):
    torch.manual_seed(int(seed))
    config = transformers.MixtralConfig(**json.loads(config_json))
    model = transformers.MixtralForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # Norm weights start at 1; random ones catch a misplaced norm.
                param.uniform_(0.5, 1.5)
            elif name.endswith("mlp.gate.weight"):  # Routers far from uniform: no near-ties in top-k.
                param.normal_(0.0, 1.0)
    model.save_pretrained(directory, safe_serialization=True)


def make_gpt2(directory, config_json, seed):
    torch.manual_seed(int(seed))
    config = transformers.GPT2Config(**json.loads(config_json))
    model = transformers.GPT2LMHeadModel(config).to(torch.float32)
    with torch.no_grad():  # LayerNorms start at (1, 0) and biases at 0; random ones catch a misplaced one.
        for name, param in model.named_parameters():
            if ".ln_" in name and name.endswith(".weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.2)
    model.save_pretrained(directory, safe_serialization=True)


def make_bert(directory, config_json, seed):
    torch.manual_seed(int(seed))
    config = transformers.BertConfig(**json.loads(config_json))
    model = transformers.BertForMaskedLM(config).to(torch.float32)
    _randomise_norms_and_biases(model)
    model.save_pretrained(directory, safe_serialization=True)


def make_t5(directory, config_json, seed):
    torch.manual_seed(int(seed))
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**json.loads(config_json)))
    with torch.no_grad():  # RMSNorm scales start at 1; random ones catch a misplaced one.
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.uniform_(0.5, 1.5)
    model.to(torch.float32).save_pretrained(directory, safe_serialization=True)


def _randomise_norms_and_biases(model):
    """LayerNorms start at (1, 0) and biases at 0; random ones catch a misplaced one."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name and name.endswith(".weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.2)


def _auto_model(directory):
    architectures = json.loads((Path(directory) / "config.json").read_text()).get("architectures") or [""]
    return (transformers.AutoModelForMaskedLM if architectures[0].endswith("ForMaskedLM")
            else transformers.AutoModelForSeq2SeqLM if architectures[0].endswith("ForConditionalGeneration")
            else transformers.AutoModelForCausalLM)


def logits(directory, tokens_path, out_path):
    model = _auto_model(directory).from_pretrained(directory, dtype=torch.float32)
    model.eval()
    tokens = torch.from_numpy(np.load(tokens_path)).long()
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            out = model(input_ids=tokens[0], decoder_input_ids=tokens[1]).logits
        else:
            out = model(tokens).logits
    np.save(out_path, out.float().numpy())


def peft_logits(base_dir, adapter_dir, tokens_path, out_path):
    import peft  # noqa: PLC0415 - only this command needs it.
    from safetensors.torch import load_file  # noqa: PLC0415

    base = _auto_model(base_dir).from_pretrained(base_dir, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    config = model.peft_config["default"]
    assert os.path.samefile(config.base_model_name_or_path, base_dir), config.base_model_name_or_path
    saved, loaded = load_file(str(Path(adapter_dir) / "adapter_model.safetensors")), \
        peft.get_peft_model_state_dict(model)
    assert sorted(saved) == sorted(loaded), sorted(set(saved) ^ set(loaded))
    for name, tensor in saved.items():
        assert torch.equal(loaded[name].float(), tensor.float()), name
    tokens = torch.from_numpy(np.load(tokens_path)).long()
    with torch.no_grad():
        if base.config.is_encoder_decoder:
            out = model(input_ids=tokens[0], decoder_input_ids=tokens[1]).logits
        else:
            out = model(input_ids=tokens).logits
    np.save(out_path, out.float().numpy())


def encode(directory, text, out_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    np.save(out_path, np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"]))


def greedy(directory, new_tokens, out_path, *texts):
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    outputs = []
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 num_beams=1, max_new_tokens=int(new_tokens))
        outputs.append(out[0, ids.shape[1]:].tolist())
    with open(out_path, "w") as f:
        json.dump(outputs, f)


def generate(directory, new_tokens, beams, length_penalty, eos_json, tokens_path, out_path):
    model = _auto_model(directory).from_pretrained(directory, dtype=torch.float32)
    model.eval()
    outputs = []
    for row in json.loads(Path(tokens_path).read_text()):
        ids = torch.tensor([row])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=int(beams),
                                 length_penalty=float(length_penalty), max_new_tokens=int(new_tokens),
                                 early_stopping=False, eos_token_id=json.loads(eos_json))
        outputs.append(out[0, 1 if model.config.is_encoder_decoder else ids.shape[1]:].tolist())
    with open(out_path, "w") as f:
        json.dump(outputs, f)


def lstm(in_path, out_path):
    arrays = dict(np.load(in_path))
    x = torch.from_numpy(arrays.pop("x"))
    layers = 1 + max(int(name.rsplit("_l", 1)[1]) for name in arrays)
    hidden = arrays["weight_hh_l0"].shape[0] // 4
    proj = arrays["weight_hr_l0"].shape[0] if "weight_hr_l0" in arrays else 0
    module = torch.nn.LSTM(x.shape[-1], hidden, num_layers=layers, proj_size=proj, batch_first=True)
    module.load_state_dict({name: torch.from_numpy(value) for name, value in arrays.items()})
    with torch.no_grad():
        out, _ = module(x)
    np.save(out_path, out.numpy())


def batch(commands_json):
    for name, *args in json.loads(commands_json):
        COMMANDS[name](*args)


COMMANDS = {"make": make, "make-mixtral": make_mixtral,
            "make-gpt2": make_gpt2, "make-bert": make_bert, "make-t5": make_t5, "logits": logits,
            "peft": peft_logits, "encode": encode, "greedy": greedy, "generate": generate, "lstm": lstm, "batch": batch}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
