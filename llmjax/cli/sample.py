"""`llmjax-sample --workdir RUN --prompt "def " [--prompt ...] [--max_new_tokens N --temperature T
--top_k K --top_p P --num_beams B --seed S --step S --grow_cache]`: text from a run's checkpoint.

Several --prompt flags are generated as one batch. --temperature 0 is greedy decoding;
--num_beams above 1 is beam search, ranking hypotheses by log-probability / length **
--length_penalty as transformers does. A decoder continues each prompt; an encoder-decoder (T5)
reads each prompt as its input and writes its own text (span corruption's: each sentinel in the
input followed by the text it stands for).
"""

from __future__ import annotations

from absl import app, flags, logging

from llmjax.cli.app import run as run_app
from llmjax.errors import FlagError

_WORKDIR = flags.DEFINE_string("workdir", None, "The run to sample from.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "A prompt; repeat the flag for a batch.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the K most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample among the most likely tokens holding this "
                                          "probability mass (1: all).")
_BEAMS = flags.DEFINE_integer("num_beams", 1, "Beam search with this many beams (1: sampling).")
_PENALTY = flags.DEFINE_float("length_penalty", 1.0, "Beam search: exponent of the length that divides a "
                                                     "hypothesis' log-probability (> 0 favours longer ones).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of sampling.")
_GROW = flags.DEFINE_bool("grow_cache", False, "Grow the key/value cache as tokens fill it: faster decoding "
                                               "of large batches or long outputs, at the price of up to 3 more "
                                               "compilations (one per chunk of the cache it grows by).")
flags.mark_flags_as_required(["workdir", "prompt"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from llmjax.checkpoint import restore_params  # noqa: PLC0415
    from llmjax.interop.run_files import decoder_start_id, eos_ids, special_ids  # noqa: PLC0415
    from llmjax.rundir import RunDir  # noqa: PLC0415
    from llmjax.sample.cached import inference_decoder  # noqa: PLC0415
    from llmjax.sample.generate import Settings, check, generate  # noqa: PLC0415
    from llmjax.sample.select import Sampling  # noqa: PLC0415
    from llmjax.sample.seq2seq import generate_seq2seq, is_seq2seq  # noqa: PLC0415

    if _BEAMS.value > 1 and (given := [f"--{f.name}" for f in (_TEMPERATURE, _TOP_K, _TOP_P) if f.present]):
        raise FlagError(f"{', '.join(given)} shape sampling, which beam search (--num_beams={_BEAMS.value}) does not "
                        f"do; drop them, or sample with --num_beams=1.")
    run = RunDir(_WORKDIR.value)
    settings = Settings(max_new_tokens=_MAX_NEW.value, num_beams=_BEAMS.value, length_penalty=_PENALTY.value,
                        grow_cache=_GROW.value, sampling=Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value))
    logging.set_verbosity(logging.ERROR)  # Orbax warns that it opens the run read-only.
    config = run.config
    if _TOP_K.value > config.model.vocab_size:
        raise FlagError(f"--top_k={_TOP_K.value} is more tokens than the model's vocabulary "
                        f"({config.model.vocab_size}); give at most that, or 0 for all.")
    seq2seq = is_seq2seq(config)
    if not seq2seq:
        inference_decoder(config)  # A family that cannot generate is refused first.
    step = run.resolve_step(_STEP.value)
    tokenizer = run.tokenizer
    ends = eos_ids(run)
    specials = special_ids(run)
    pad = next((i for i in (specials["pad_token_id"], *ends) if i is not None), 0)
    prompts = [e.ids for e in tokenizer.encode_batch(_PROMPT.value)]
    check(prompts, settings, None if seq2seq else config.model.max_seq_len)  # Before the model is loaded.
    params = restore_params(run.path, config, step)
    if seq2seq:
        out = generate_seq2seq(params, config, prompts, settings, eos_ids=tuple(ends), pad_id=pad,
                               start_id=decoder_start_id(run), seed=_SEED.value)
    else:
        out = generate(params, config, prompts, settings, eos_ids=tuple(ends), pad_id=pad, seed=_SEED.value)
    for prompt, new in zip(_PROMPT.value, out["tokens"].tolist()):
        end = next((i for i, token in enumerate(new) if token in ends), len(new))
        print(f"=== {prompt!r}\n{'' if seq2seq else prompt}{tokenizer.decode(new[:end], skip_special_tokens=False)}")


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
