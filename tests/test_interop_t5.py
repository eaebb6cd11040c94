"""T5 against transformers itself (in .venv-ref): random Hugging Face T5ForConditionalGenerations
(random RMSNorm scales, so a misplaced one shows; heads x head_dim unequal to d_model) are
imported and must compute transformers' fp32 decoder logits, with and without the original
T5's output scaling and with its ReLU MLP; a T5 trained by llmjax is exported and must load in transformers with
the same logits; configs llmjax would not reproduce are refused before anything is written."""

import json
import subprocess
import sys

import pytest

from llmjax.checkpoint import restore_params
from llmjax.data.tokenizer import train_tokenizer
from llmjax.interop.export import export_hf
from llmjax.interop.import_hf import import_hf
from llmjax.interop.run_files import decoder_start_id, eos_ids
from llmjax.interop.safetensors_io import SafetensorsReader
from llmjax.interop.tensor_map import InteropError
from llmjax.rundir import RunDir
from llmjax.sample.search import Settings
from llmjax.sample.select import Sampling
from llmjax.sample.seq2seq import generate_seq2seq

from conftest import ROOT, train_command, train_env
from hf_parity import (CONTINUE, NEW_TOKENS, QUIET, assert_config_refused_before_writing, assert_logits_match,
                       generation_commands, generation_inputs, llmjax_logits, random_tokens, read_generated,
                       reference_logits, until_end)

pytestmark = pytest.mark.slow

HF_CONFIG = dict(vocab_size=384, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=3,
                 relative_attention_num_buckets=16, relative_attention_max_distance=20,
                 feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                 decoder_start_token_id=0)
# T5 v1.1 checkpoints say tie_word_embeddings=false: transformers 5 ties them all the same and
# then leaves the decoder's output unscaled; the original T5 scales it by d_model^-0.5.
VARIANTS = {"v1.1": dict(tie_word_embeddings=False), "scaled": {},
            "original": dict(feed_forward_proj="relu")}  # t5-small's shape: the ReLU MLP, scaled.
TEXTS = ["import json\nclass Encoder:\n    def encode(self, o):\n        return json.dumps(o)\n"] * 20


def seq2seq_tokens(seed, vocab):
    """[2, B, T]: encoder inputs (24 tokens) and decoder inputs (24 tokens; the positions cross
    several exact and logarithmic buckets)."""
    return random_tokens(seed, vocab, (2, 3, 24))


@pytest.fixture(scope="module")
def t5(reference_python, tmp_path_factory):
    """Each VARIANT: {"hf", "run", "tokens", "logits"}, a random transformers T5 imported with
    import_hf, and transformers' fp32 logits; "trained": the same for a t5-tiny run of
    llmjax-train exported to "hf". All of transformers' side runs in one process."""
    tmp = tmp_path_factory.mktemp("t5")
    trained = dict(run=tmp / "trained" / "run", hf=tmp / "trained" / "hf")
    training = subprocess.Popen(
        train_command(trained["run"], *CONTINUE, config="configs/t5_tiny.py"), cwd=ROOT,
        env=train_env(tmp / "cache"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    models, commands = {}, []
    for seed, (variant, changes) in enumerate(VARIANTS.items()):
        hf_dir = tmp / variant / "hf"
        hf_dir.mkdir(parents=True)
        train_tokenizer(TEXTS, HF_CONFIG["vocab_size"], hf_dir / "tokenizer.json")
        models[variant] = dict(hf=hf_dir, run=tmp / variant / "run",
                               tokens=seq2seq_tokens(seed, HF_CONFIG["vocab_size"]))
        commands.append(["make-t5", hf_dir, json.dumps(HF_CONFIG | changes), seed])
    _, stderr = training.communicate(timeout=600)
    assert training.returncode == 0, stderr[-3000:]
    export_hf(trained["run"], trained["hf"], **QUIET)
    trained["tokens"] = seq2seq_tokens(2, RunDir(trained["run"]).config.model.vocab_size)
    everything = models | {"trained": trained}
    # Generation: the random model with 40 end tokens (a tenth of its vocabulary, so that beams
    # end at different lengths and the length penalty decides), and the trained one with its own.
    models["scaled"]["inputs"] = generation_inputs(3, HF_CONFIG["vocab_size"])
    commands += generation_commands(models["scaled"], tmp / "scaled", list(range(1, 41)))
    trained["inputs"] = generation_inputs(4, RunDir(trained["run"]).config.model.vocab_size)
    commands += generation_commands(trained, tmp / "trained", eos_ids(RunDir(trained["run"])))
    reference_logits(reference_python, tmp, commands, everything)
    for name, m in everything.items():
        if "inputs" in m:
            read_generated(m, tmp / name)
    for m in models.values():
        import_hf(m["hf"], m["run"], **QUIET)
    return everything


@pytest.mark.parametrize("variant", VARIANTS)
def test_imported_t5_computes_the_logits_of_transformers(t5, variant):
    m = t5[variant]
    assert RunDir(m["run"]).config.model.rescale_output == (variant != "v1.1")
    rel = assert_logits_match(llmjax_logits(m["run"], m["tokens"]), m["logits"])
    print(f"{variant} imported parity: max |diff| / max |logit| = {rel:.2e}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_of_import_is_the_original_checkpoint(t5, variant, tmp_path):
    m = t5[variant]
    export_hf(m["run"], tmp_path / "out", **QUIET)
    source, exported = SafetensorsReader(m["hf"]), SafetensorsReader(tmp_path / "out")
    assert exported.names() == source.names()
    for name in exported.names():
        assert exported.read(name).tobytes() == source.read(name).tobytes(), name
    hf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf["decoder_start_token_id"] == 0
    assert hf["feed_forward_proj"] == (HF_CONFIG | VARIANTS[variant])["feed_forward_proj"]


def test_trained_t5_export_loads_in_transformers_with_its_logits(t5):
    m = t5["trained"]
    rel = assert_logits_match(llmjax_logits(m["run"], m["tokens"]), m["logits"])
    print(f"exported parity: max |diff| / max |logit| = {rel:.2e}")


@pytest.mark.parametrize("model", ["scaled", "trained"])
def test_greedy_and_beam_search_give_the_sequences_of_transformers(t5, model):
    """All inputs in one right-padded batch, against transformers' generate on each alone."""
    m = t5[model]
    run = RunDir(m["run"])
    config = run.config
    config.model.dtype = "float32"
    params = restore_params(run.path, config, run.resolve_step(None))
    for (beams, penalty), theirs in m["generated"].items():
        settings = Settings(max_new_tokens=NEW_TOKENS, num_beams=beams, length_penalty=penalty,
                            sampling=Sampling(temperature=0.0))
        out = generate_seq2seq(params, config, m["inputs"], settings, eos_ids=tuple(m["eos"]), pad_id=0,
                               start_id=decoder_start_id(run))["tokens"].tolist()
        assert [until_end(tokens, m["eos"]) for tokens in out] == theirs, (beams, penalty)
    if model == "scaled":  # The settings change the answer: the test sees the length penalty.
        generated = m["generated"]
        assert generated[(1, 1.0)] != generated[(5, 1.0)] != generated[(5, 0.0)]


def test_sample_command_writes_the_text_an_encoder_decoder_generates(t5):
    m = t5["trained"]
    run = RunDir(m["run"])
    prompt = "import json\n<|sentinel_0|> Encoder:"
    result = subprocess.run([sys.executable, "-m", "llmjax.cli.sample", f"--workdir={m['run']}",
                             f"--prompt={prompt}", "--num_beams=5", "--length_penalty=0.5", "--max_new_tokens=8"],
                            cwd=ROOT, env=train_env(m["run"].parent / "cache"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    config = run.config
    settings = Settings(max_new_tokens=8, num_beams=5, length_penalty=0.5)
    ends = eos_ids(run)
    out = generate_seq2seq(restore_params(run.path, config, run.resolve_step(None)), config,
                           [run.tokenizer.encode(prompt).ids], settings, eos_ids=tuple(ends), pad_id=0,
                           start_id=decoder_start_id(run))["tokens"][0].tolist()
    end = next((i for i, token in enumerate(out) if token in ends), len(out))
    expected = run.tokenizer.decode(out[:end], skip_special_tokens=False)
    assert result.stdout == f"=== {prompt!r}\n{expected}\n"


def test_untied_t5_is_refused_by_export_naming_the_reason(t5, tmp_path):
    run = RunDir(t5["trained"]["run"])
    config = run.config
    config.model.tie_embeddings, config.model.rescale_output = False, False
    from llmjax.model.t5 import hf  # noqa: PLC0415
    with pytest.raises(InteropError, match="tie_embeddings"):
        hf.hf_config(config.model, "float32", {})


@pytest.mark.parametrize("changes, field", [
    (dict(feed_forward_proj="gelu"), "feed_forward_proj"),
    (dict(feed_forward_proj="gated-relu"), "feed_forward_proj"),
    (dict(num_decoder_layers=3), "num_decoder_layers"),
    (dict(is_encoder_decoder=False), "is_encoder_decoder"),
    (dict(d_kv=None), "d_kv"),
])
def test_unsupported_configs_are_refused_before_anything_is_written(t5, tmp_path, changes, field):
    assert_config_refused_before_writing(t5["scaled"]["hf"], changes, field, tmp_path)
