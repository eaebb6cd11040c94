"""KV-cache generation against full forward passes of the same model, and the decoding loops
against hand-made distributions where the right answer is known."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax import model
from llmjax.config import default_config
from llmjax.errors import LlmjaxError
from llmjax.model.layers.kv_cache import cache_attention
from llmjax.sample import cached
from llmjax.sample.cached import inference_decoder
from llmjax.sample.generate import (Settings, _run, compilations, decode_step, generate, left_pad, prefill,
                                    prepare, reorder_state)
from llmjax.sample.search import beam_search, sample_tokens
from llmjax.sample import seq2seq
from llmjax.sample.seq2seq import generate_seq2seq, right_pad, seq2seq_model
from llmjax.sample.select import Sampling, choose, filter_logits

from conftest import DECODERS, init_params, make_tiny_config, unstack_layers

EOS, PAD = 1, 0
GREEDY = Settings(max_new_tokens=6, sampling=Sampling(temperature=0.0))


def _setup(family="llama", **overrides):
    config = make_tiny_config(family, **overrides)
    params = init_params(config)
    # Scale the output layer up so that logits are far apart and argmax is not decided by noise.
    params = jax.tree.map(lambda x: x * 3.0, params)
    return config, params


PROMPTS = [[5, 9, 17, 33, 2], [40, 41], [7, 8, 9]]


@pytest.mark.parametrize("family", DECODERS)
def test_cached_decoding_equals_full_forward_and_greedy_is_its_argmax(family):
    config, params = _setup(family)
    out = generate(params, config, PROMPTS, GREEDY, eos_ids=(), pad_id=PAD, keep_logits=True)
    # One uncached forward pass over each prompt + its generated tokens, the rows right-padded
    # to one length (causality: padding after a position changes nothing at or before it).
    # Its logits at each position are those of a full forward pass over the sequence so far.
    sequences = [p + out["tokens"][row].tolist() for row, p in enumerate(PROMPTS)]
    width = max(map(len, sequences))
    full = model.apply(params, jnp.asarray([s + [PAD] * (width - len(s)) for s in sequences]),
                       config=config)
    for row, prompt in enumerate(PROMPTS):
        expected = np.asarray(full[row, len(prompt) - 1:len(sequences[row]) - 1])
        # Left padding and the cache change no logit beyond fp32 rounding.
        np.testing.assert_allclose(out["logits"][row], expected, rtol=1e-5, atol=1e-5)
        assert out["tokens"][row].tolist() == expected.argmax(-1).tolist()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_prefix_lm_reads_its_prompt_as_the_prefix_it_was_trained_with(family):
    """The first new token's logits are those of the training pass with the prompt as the
    prefix (every prompt token seeing all of it), not of a causal pass; the later ones, of the
    same pass over prompt + tokens so far, since what follows the prefix is causal."""
    config, params = _setup(family)
    config.objective = default_config(family, "prefix_lm").objective
    out = generate(params, config, PROMPTS, GREEDY, eos_ids=(), pad_id=PAD, keep_logits=True)
    for row, prompt in enumerate(PROMPTS):
        sequence = prompt + out["tokens"][row].tolist()
        batch = {"inputs": jnp.asarray([sequence]), "positions": None, "segment_ids": None,
                 "prefix": jnp.asarray([[i < len(prompt) for i in range(len(sequence))]])}
        expected = np.asarray(model.forward(params, batch, config=config)[0, len(prompt) - 1:-1])
        np.testing.assert_allclose(out["logits"][row], expected, rtol=1e-5, atol=1e-5)
        causal = np.asarray(model.apply(params, jnp.asarray([sequence]), config=config)[0, len(prompt) - 1])
        assert np.abs(causal - expected[0]).max() > 1e-3  # Read causally, the prompt gives other logits.


def test_eos_stops_a_row_and_pads_after_it():
    config, params = _setup()
    free = generate(params, config, PROMPTS, GREEDY, eos_ids=(), pad_id=PAD)["tokens"]
    eos = int(free[0, 2])
    out = generate(params, config, PROMPTS, GREEDY, eos_ids=(eos,), pad_id=PAD)["tokens"]
    assert (out == PAD).any()
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(free[row] == eos)
        end = hits[0] + 1 if hits.size else free.shape[1]
        assert out[row, :end].tolist() == free[row, :end].tolist()
        assert (out[row, end:] == PAD).all()


def test_sampling_is_deterministic_given_the_seed():
    config, params = _setup()
    sampled = Settings(max_new_tokens=6, sampling=Sampling(temperature=1.5))
    first = generate(params, config, PROMPTS, sampled, eos_ids=(), pad_id=PAD, seed=3)["tokens"]
    again = generate(params, config, PROMPTS, sampled, eos_ids=(), pad_id=PAD, seed=3)["tokens"]
    other = generate(params, config, PROMPTS, sampled, eos_ids=(), pad_id=PAD, seed=4)["tokens"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_top_k_1_is_greedy_at_any_temperature():
    logits = jax.random.normal(jax.random.key(0), (64, 50))
    for seed in range(3):
        chosen = choose(jax.random.key(seed), logits, Sampling(temperature=2.0, top_k=1))
        np.testing.assert_array_equal(chosen, jnp.argmax(logits, -1))


def _log_probs(params, config, prompts, new_tokens):
    """Summed log-probabilities of each row's new tokens, by one uncached forward pass."""
    sequences = [p + list(n) for p, n in zip(prompts, new_tokens)]
    width = max(map(len, sequences))
    logits = model.apply(params, jnp.asarray([s + [PAD] * (width - len(s)) for s in sequences]),
                         config=config)
    logp = jax.nn.log_softmax(logits, -1)
    return np.asarray([sum(float(logp[row, len(p) - 1 + i, t]) for i, t in enumerate(n))
                       for row, (p, n) in enumerate(zip(prompts, new_tokens))])


@pytest.mark.parametrize("family", DECODERS)
def test_beam_search_scores_its_sequences_and_one_beam_is_greedy(family):
    # Unscanned layers here (scanned elsewhere): a cache per layer, each reordered by beam.
    config, params = _setup(family, **({} if family == "lstm" else dict(scan_layers=False)))
    beams = generate(params, config, PROMPTS, dataclasses.replace(GREEDY, num_beams=3),
                     eos_ids=(), pad_id=PAD)
    # The score is the true log-probability of the returned sequence: the cache followed
    # the surviving beams correctly.
    np.testing.assert_allclose(beams["scores"], _log_probs(params, config, PROMPTS, beams["tokens"]),
                               rtol=1e-4)
    greedy = generate(params, config, PROMPTS, GREEDY, eos_ids=(), pad_id=PAD)["tokens"]

    tokens, mask = left_pad(PROMPTS, PAD)
    decoder = inference_decoder(config)

    @jax.jit
    def one_beam(params):
        logits, state = prefill(params, decoder, tokens, mask, tokens.shape[1] + 6)
        return beam_search(decode_step(params, decoder), reorder_state, state, logits,
                           num_beams=1, max_new_tokens=6, eos_ids=jnp.asarray([-1]), pad_id=PAD)
    np.testing.assert_array_equal(one_beam(params)[0], greedy)


def test_filters_keep_the_most_likely_tokens():
    logits = jnp.log(jnp.asarray([[0.5, 0.05, 0.3, 0.15]]))
    assert np.isfinite(filter_logits(logits, 2, 1.0)).tolist() == [[True, False, True, False]]
    # 0.5 + 0.3 reaches 0.8: the 0.15 and 0.05 tokens are cut.
    assert np.isfinite(filter_logits(logits, 0, 0.8)).tolist() == [[True, False, True, False]]
    assert np.isfinite(filter_logits(logits, 0, 0.81)).tolist() == [[True, False, True, True]]
    assert np.isfinite(filter_logits(logits, 0, 0.1)).tolist() == [[True, False, False, False]]


def _markov(table):
    """A step function whose next-token distribution depends only on the last token."""
    log_table = jnp.log(jnp.asarray(table))
    return lambda state, tokens: (log_table[tokens], state)


# Token 0 is pad, 1 is EOS. From the start, token 2 (p=0.6) leads to a flat distribution over
# 2..4, while token 3 (p=0.4) leads to EOS with certainty: greedy takes 2 and ends with a
# sequence of probability 0.6 * 0.33 * ..., beam search finds [3, EOS] with probability 0.4.
TABLE = [[1e-9, 1e-9, 0.6, 0.4, 1e-9],  # Start (row 0 doubles as the pad token's row).
         [1e-9, 1.0, 1e-9, 1e-9, 1e-9],  # EOS
         [1e-9, 1e-9, 1 / 3, 1 / 3, 1 / 3],
         [1e-9, 1.0, 1e-9, 1e-9, 1e-9],
         [1e-9, 1e-9, 1 / 3, 1 / 3, 1 / 3]]


def test_beam_search_finds_the_more_likely_sequence():
    step = _markov(TABLE)
    start = jnp.log(jnp.asarray([TABLE[0]] * 2))  # Two beams of one batch row.
    tokens, score = beam_search(step, lambda s, rows: s, None, start, num_beams=2,
                                max_new_tokens=4, eos_ids=jnp.asarray([EOS]), pad_id=PAD)
    assert tokens.tolist() == [[3, EOS, PAD, PAD]]
    np.testing.assert_allclose(score, [np.log(0.4)], rtol=1e-5)
    greedy, _ = sample_tokens(step, None, start[:1], jax.random.key(0), max_new_tokens=4,
                              sampling=Sampling(temperature=0.0), eos_ids=jnp.asarray([EOS]),
                              pad_id=PAD)
    assert greedy[0, 0] == 2  # The myopic choice.


def test_the_length_penalty_decides_between_hypotheses_of_different_lengths():
    """[3, EOS] has log-probability log 0.4 over 2 tokens, [2, 3, EOS] log 0.2 over 3: ranked
    by log p / length ** penalty, penalty 0 (or 1) keeps the shorter, 3 the longer."""
    step = _markov(TABLE)
    start = jnp.log(jnp.asarray([TABLE[0]] * 2))
    for penalty, expected in [(0.0, [3, EOS, PAD]), (1.0, [3, EOS, PAD]), (3.0, [2, 3, EOS])]:
        tokens, score = beam_search(step, lambda s, rows: s, None, start, num_beams=2, max_new_tokens=3,
                                    eos_ids=jnp.asarray([EOS]), pad_id=PAD, length_penalty=penalty)
        assert tokens.tolist() == [expected], penalty
        np.testing.assert_allclose(score, [np.log(0.4 if expected[0] == 3 else 0.6 / 3)], rtol=1e-5)


def test_a_family_without_a_cached_decoder_is_refused_by_name():
    with pytest.raises(LlmjaxError, match="the bert family has no cached decoder; it cannot generate text"):
        inference_decoder(make_tiny_config("bert"))


@pytest.mark.parametrize("family", DECODERS)
def test_prompt_lengths_within_a_bucket_share_one_compilation_and_padding_changes_nothing(family):
    config, params = _setup(family)
    settings = dataclasses.replace(GREEDY, max_new_tokens=4)
    prompt = [int(t) for t in np.random.default_rng(1).integers(2, config.model.vocab_size, 17)]
    before = compilations()
    outs = [generate(params, config, [prompt[-n:]], settings, eos_ids=(), pad_id=PAD)["tokens"][0].tolist()
            for n in (9, 13, 16)]  # One bucket of 16.
    assert compilations() - before == 1
    generate(params, config, [prompt], settings, eos_ids=(), pad_id=PAD)  # 17: the next bucket.
    assert compilations() - before == 2
    # The padded generation is the one from the prompt alone, decoded step by step.
    for n, out in zip((9, 13, 16), outs):
        tokens = list(prompt[-n:])
        for _ in range(4):
            logits = model.apply(params, jnp.asarray([tokens]), config=config)
            tokens.append(int(jnp.argmax(logits[0, -1])))
        assert out == tokens[n:]


def _loop_bodies(jaxpr):
    """The body jaxprs of every while loop in `jaxpr`, nested ones included."""
    return [eqn.params["body_jaxpr"].jaxpr for eqn in _equations(jaxpr) if eqn.primitive.name == "while"]


def _equations(jaxpr):
    """Every equation of `jaxpr`, those of nested jaxprs (loops, scans, calls) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in (value if isinstance(value, tuple) else (value,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def _primitives(jaxpr):
    return (eqn.primitive.name for eqn in _equations(jaxpr))


@pytest.mark.parametrize("family", DECODERS)
def test_prefill_applies_the_output_layer_to_each_prompts_last_token_only(family):
    """Generation needs the logits of each prompt's next token; over all prompt tokens the
    output layer was a quarter of a bench36m prefill's FLOPs."""
    config, params = _setup(family, vocab_size=100)  # A width no other product has.
    tokens, mask = left_pad(PROMPTS, PAD, 8)
    jaxpr = jax.make_jaxpr(lambda p: prefill(p, inference_decoder(config), tokens, mask, 16))(params).jaxpr
    vocab = config.model.vocab_size
    head_rows = [np.prod(eqn.outvars[0].aval.shape[:-1]) for eqn in _equations(jaxpr)
                 if eqn.primitive.name == "dot_general" and eqn.outvars[0].aval.shape[-1] == vocab]
    assert head_rows == [len(PROMPTS)]


@pytest.mark.parametrize("family", ["llama", "moe-capacity", "gpt2"])
def test_decoding_splits_scanned_layers_once_before_the_loop(family):
    """With stacked params, every decoded token would slice each layer's weights out of the
    stack again (a layer scan inside the decode loop). The generation is that of the same
    model built unrolled."""
    config, params = _setup(family)
    assert config.model.scan_layers
    tokens, mask = left_pad(PROMPTS, PAD, 8)
    traced = _run.trace(params, tokens, mask, jax.random.key(0), jnp.asarray([EOS]), jnp.int32(PAD),
                        decoder=inference_decoder(config), settings=GREEDY, cache_length=16, keep_logits=False)
    bodies = list(_loop_bodies(traced.jaxpr.jaxpr))
    assert bodies and not any("scan" in set(_primitives(body)) for body in bodies)
    assert "layers" not in cached.unrolled(params, inference_decoder(config))[0]
    stacked = jax.tree.leaves(params["layers"])[0].shape[0]  # Blocks, or MoE groups of blocks.
    expected = generate(unstack_layers(params, stacked), make_tiny_config(family, scan_layers=False), PROMPTS,
                        GREEDY, eos_ids=(), pad_id=PAD)
    np.testing.assert_array_equal(generate(params, config, PROMPTS, GREEDY, eos_ids=(), pad_id=PAD)["tokens"],
                                  expected["tokens"])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's matrix-vector products")
def test_one_row_bf16_decoding_converts_no_weight_inside_the_loop():
    """XLA:CPU runs a one-row bf16 product as an fp32 one. Compiled as the many-row loop is
    (float normalization off, `CPU_XLA_FLAGS`), that upcast lands inside the decode loop and
    converts every weight at every token; the one-row loop is compiled with the pass, so the
    weights enter the loop converted. Both loops compile the same one-row generation here."""
    config, params = _setup(dtype="bfloat16")
    loop, args, static = prepare(params, config, PROMPTS[:1], GREEDY, eos_ids=(), pad_id=PAD)
    assert loop is not _run and prepare(params, config, PROMPTS[:2], GREEDY, eos_ids=(), pad_id=PAD)[0] is _run

    def weight_converts_in_loop(jitted):
        hlo = jitted.lower(*args, **static).compile().as_text()
        body = re.search(r"body=(%[\w.-]+)", hlo).group(1)
        text = hlo[hlo.index(f"\n{body} "):]
        text = text[:text.index("\n}\n")]
        return len(re.findall(r"= f32\[\d+,\d+\]\S* (?:convert\(%get-tuple-element|fusion\("
                              r"%get-tuple-element[^)]*\), kind=kLoop, calls=%wrapped_convert)", text))

    assert weight_converts_in_loop(loop) == 0
    # Two layers' fused q/k/v, o, fused gate/up and down (`project_together`).
    assert weight_converts_in_loop(_run) >= 2 * 4


def _computations(hlo: str) -> dict[str, str]:
    """Each computation of compiled HLO text by name."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^(?:ENTRY )?(%[\w.-]+) .*?\n}$", hlo, re.M | re.S)}


def _called(computations: dict[str, str], root: str) -> set[str]:
    """`root` and every computation it calls, directly or not (fusions, nested loops)."""
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name not in seen and name in computations:
            seen.add(name)
            todo += re.findall(r"(?:calls|body|condition|to_apply|branch_computations)=\{?(%[\w.-]+)",
                               computations[name])
    return seen


def _generation_loop(family, config, params, rows):
    """(jitted generation, its arguments, its static arguments) for `rows` prompts."""
    if family != "t5":
        return prepare(params, config, PROMPTS[:rows], GREEDY, eos_ids=(), pad_id=PAD)
    tokens, segments = right_pad(PROMPTS[:rows], PAD)
    return (seq2seq._run, (params, tokens, segments, jax.random.key(0), jnp.asarray([EOS]), jnp.int32(PAD),
                           jnp.int32(PAD)), {"model": seq2seq_model(config), "settings": GREEDY, "keep_logits": False})


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("rows", [1, 2])
def test_a_decode_step_projects_each_group_of_kernels_in_one_product(family, rows):
    """One row's step reads every weight for a single row, and XLA:CPU pays a pass per product:
    query/key/value and the gated MLP's two input kernels each run as one product
    (`project_together`). Their kernels are concatenated once, outside the decode loop: inside
    it, a step would copy the weights it only needs to read."""
    config, params = _setup(family)
    loop, args, static = _generation_loop(family, config, params, rows)
    [body] = _loop_bodies(loop.trace(*args, **static).jaxpr.jaxpr)
    # Per layer: q/k/v, the scores, their values, the output, gate/up and down; T5's decoder
    # adds cross-attention's six (its keys and values, of the encoder's output, XLA hoists).
    per_layer = 6 + 6 * (family == "t5")
    assert sum(name == "dot_general" for name in _primitives(body)) == per_layer * config.model.num_layers + 1
    hlo = loop.lower(*args, **static).compile().as_text()
    computations = _computations(hlo)
    in_loop = set().union(*(_called(computations, name) for name in re.findall(r"body=(%[\w.-]+)", hlo)))
    d = config.model.d_model
    concatenating = {name for name, text in computations.items()
                     if re.search(rf"= \w+\[{d},\d+\]\S* concatenate\(", text)}
    assert concatenating and not concatenating & in_loop


def test_cache_attention_is_dot_product_attention():
    """Grouped heads, a mask and a bias: the cache's own layout gives XLA's attention."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32)
               for shape in ((2, 3, 4, 8), (2, 5, 2, 8), (2, 5, 2, 8)))
    mask = jnp.asarray(rng.random((2, 1, 3, 5)) < 0.7).at[..., 0].set(True)
    bias = jnp.asarray(rng.normal(size=(1, 4, 3, 5)), jnp.float32)
    for b, scale in ((None, None), (bias, 1.0)):
        expected = jax.nn.dot_product_attention(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), bias=b,
                                                mask=mask, scale=scale, implementation="xla")
        np.testing.assert_allclose(cache_attention(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask, b, scale),
                                   expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", [*DECODERS, "t5"])
def test_a_growing_cache_decodes_what_the_full_one_does(family, monkeypatch):
    """Grown in chunks of 4 slots, the cache of every loop stage holds the slots its steps
    write, and the empty slots left out change no logit, in sampling and in beam search (whose
    reordering follows the cache through every stage)."""
    monkeypatch.setattr(cached, "GROWTH_CHUNK", 4)
    config, params = _setup(family, **({} if family == "lstm" else dict(scan_layers=False)))
    settings = dataclasses.replace(GREEDY, max_new_tokens=12)
    grown = dataclasses.replace(settings, grow_cache=True)
    if family == "t5":
        def run(s, **kw):
            return generate_seq2seq(params, config, PROMPTS, s, eos_ids=(), pad_id=PAD, start_id=0, **kw)
    else:
        def run(s, **kw):
            return generate(params, config, PROMPTS, s, eos_ids=(), pad_id=PAD, **kw)
    full, grew = run(settings, keep_logits=True), run(grown, keep_logits=True)
    np.testing.assert_array_equal(grew["tokens"], full["tokens"])
    # Softmax sums over fewer slots round differently (T5's, up to 4e-4 on logits of up to 35,
    # as 7 more empty slots in one cache give 6e-5); a slot written in the wrong place is O(1).
    np.testing.assert_allclose(grew["logits"], full["logits"], rtol=1e-5, atol=1e-3)
    beams = [run(dataclasses.replace(s, num_beams=3)) for s in (settings, grown)]
    np.testing.assert_array_equal(beams[1]["tokens"], beams[0]["tokens"])
    np.testing.assert_allclose(beams[1]["scores"], beams[0]["scores"], rtol=1e-4)


def test_the_cache_grows_in_stages_that_hold_every_step():
    """Chunks of 64 slots or more, at most 4 loops; each stage's steps write slots below its
    length (step i writes slot filled + i), and the new slots are empty padding (segment 0)."""
    length, stages = cached.growth(16, 16 + 100, grow_cache=True)
    assert (length, [step for step, _ in stages]) == (80, [64])
    assert cached.growth(16, 116, grow_cache=False) == (116, ())
    length, stages = cached.growth(100, 100 + 1000, grow_cache=True)  # Chunks of 256.
    assert (length, [step for step, _ in stages]) == (356, [256, 512, 768])
    cache = {"layer": {"cached_key": jnp.ones((2, 1, 3, 4)), "cached_value": jnp.ones((2, 1, 3, 4)),
                       "cached_segment_ids": jnp.ones((2, 3), jnp.int32), "cache_index": jnp.int32(3)}}
    state = stages[0][1]((cache, "positions"))
    assert state[1] == "positions"
    grown = state[0]["layer"]
    assert grown["cached_key"].shape == (2, 1, 612, 4) and grown["cached_segment_ids"].shape == (2, 612)
    assert not grown["cached_segment_ids"][:, 3:].any() and grown["cached_segment_ids"][:, :3].all()
    assert grown["cache_index"] == 3
