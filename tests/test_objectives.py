"""The objectives' rows: MLM's corruption rates on a large sample, special tokens never
chosen, prefix LM's split documents, every row a pure function of (seed, row index); a prefix-LM
decoder's attention; a tokenizer without the tokens an objective needs is refused by name."""

import json

import grain
import numpy as np
import pytest

from llmjax.model import registry

from llmjax.config import ConfigError, default_config, validate
from llmjax.data.errors import DataError
from llmjax.data.pipeline import PackedWindows
from llmjax.data.tokenizer import MASK, train_tokenizer
from llmjax.train import objectives
from llmjax.train.objectives.span import lengths as span_lengths
from llmjax.train.objectives.span_lengths import noise_counts
from llmjax.train.loop import train

from conftest import init_params, make_tiny_config

TEXTS = ["def f(x):\n    return [x, x + 1, {'a': x}]\n", "class A:\n    pass\n"] * 30


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(TEXTS, 300, tmp_path_factory.mktemp("tok") / "tokenizer.json", (MASK,))


def mlm_rows(tokenizer, seed=0, seq_len=128, documents=4000):
    """MLM rows over a stream of real documents joined by EOS, as the pipeline builds them."""
    ids = [t for text in TEXTS[:2] * (documents // 2) for t in tokenizer.encode_batch([text])[0] + [tokenizer.eos_id]]
    windows = grain.MapDataset.source(PackedWindows(np.asarray(ids, np.int32), seq_len, tokenizer.eos_id,
                                                    tokenizer.pad_id))
    mlm = objectives.get("mlm").impl()
    config = default_config("bert")
    return windows, mlm.rows(windows, config, seed, mlm.token_ids(tokenizer)), mlm.token_ids(tokenizer)


def test_mlm_chooses_masks_replaces_and_keeps_at_bert_rates(tokenizer):
    windows, rows, ids = mlm_rows(tokenizer)
    original = np.stack([windows[i]["inputs"] for i in range(len(windows))])
    got = [rows[i] for i in range(len(windows))]
    inputs, targets = np.stack([r["inputs"] for r in got]), np.stack([r["targets"] for r in got])
    chosen = np.stack([r["weights"] for r in got]) > 0
    text = ~np.isin(original, ids["special"])
    np.testing.assert_array_equal(targets, original)
    assert not chosen[~text].any()  # EOS, padding and the mask token are never chosen.
    assert (inputs[~chosen] == original[~chosen]).all()  # Only chosen tokens change.
    n = chosen.sum()
    assert text.sum() > 40_000 and n > 6_000
    assert abs(n / text.sum() - 0.15) < 0.01
    masked = inputs[chosen] == ids["mask"]
    kept = inputs[chosen] == original[chosen]
    assert abs(masked.mean() - 0.8) < 0.02
    assert abs(kept.mean() - 0.1) < 0.015  # A random token equals the original 1 time in ~300.
    random = ~masked & ~kept
    assert abs(random.mean() - 0.1) < 0.015
    assert np.isin(inputs[chosen][random], ids["text"]).all()


def test_mlm_rows_are_a_function_of_seed_and_row_index(tokenizer):
    _, rows, _ = mlm_rows(tokenizer)
    _, again, _ = mlm_rows(tokenizer)
    _, other_seed, _ = mlm_rows(tokenizer, seed=1)
    for key in ("inputs", "weights"):
        np.testing.assert_array_equal(rows[5][key], again[5][key])
        assert not np.array_equal(rows[5][key], rows[6][key])
        assert not np.array_equal(rows[5][key], other_seed[5][key])


def test_an_objective_whose_special_tokens_the_tokenizer_lacks_is_refused(tmp_path):
    plain = train_tokenizer(TEXTS, 300, tmp_path / "tokenizer.json")
    with pytest.raises(DataError, match=r"objective mlm needs a mask token, and tokenizer .* has none "
                                        r"\(looked for <\|mask\|>, \[MASK\], <mask>\)"):
        objectives.get("mlm").impl().token_ids(plain)


def test_an_objective_the_family_does_not_train_on_is_refused():
    config = default_config("llama", "mlm")
    with pytest.raises(ConfigError, match=r"objective.name='mlm': the llama family does not train on it; "
                                          r"it trains on causal_lm"):
        validate(config, 1)
    config = default_config("bert")
    config.objective.name = "causal_lm"  # The MLM section's rates left behind.
    with pytest.raises(ConfigError, match="the bert family does not train on it"):
        validate(config, 1)


def prefix_rows(seed=0, seq_len=64):
    tokens = np.random.default_rng(0).integers(3, 300, 4000).astype(np.int32)
    tokens[::37] = 2  # EOS: several documents a window.
    windows = grain.MapDataset.source(PackedWindows(tokens, seq_len, eos_id=2, pad_id=0))
    prefix_lm = objectives.get("prefix_lm").impl()
    return windows, prefix_lm.rows(windows, default_config("llama"), seed, {})


def test_prefix_lm_opens_a_prefix_in_each_document_and_scores_only_after_it():
    windows, rows = prefix_rows()
    lengths = []
    for g in range(len(windows)):
        window, row = windows[g], rows[g]
        for segment in np.unique(row["segment_ids"]):
            at = row["segment_ids"] == segment
            prefix, weights, causal = row["prefix"][at], row["weights"][at], window["weights"][at]
            n = int(prefix.sum())
            assert (prefix[:n] == 1).all() and (prefix[n:] == 0).all()  # A prefix is where a document starts.
            assert 1 <= n < at.sum() or at.sum() == 1
            # The last prefix token predicts the first target; nothing before it is scored.
            np.testing.assert_array_equal(weights[:max(n - 1, 0)], 0)
            np.testing.assert_array_equal(weights[max(n - 1, 0):], causal[max(n - 1, 0):])
            lengths.append(n / at.sum())
    assert 0.4 < np.mean(lengths) < 0.6  # Uniform split points.
    _, again = prefix_rows()
    _, other = prefix_rows(seed=1)
    np.testing.assert_array_equal(rows[3]["prefix"], again[3]["prefix"])
    assert not np.array_equal(rows[3]["prefix"], other[3]["prefix"])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_prefix_lm_decoder_reads_its_prefix_both_ways_and_the_rest_causally(family):
    """Changing a prefix token changes the outputs before it; changing a target token changes
    nothing before it; and without a prefix the model is the causal one."""
    config = make_tiny_config(family)
    params = init_params(config)
    tokens = np.random.default_rng(0).integers(0, 128, (1, 16)).astype(np.int32)
    prefix = (np.arange(16) < 6)[None].astype(np.int32)
    math = registry.of(config).math()

    def logits(tokens, prefix=None):
        batch = {"inputs": tokens} | ({} if prefix is None else {"prefix": prefix})
        return np.asarray(math.apply(params, batch, config=config))

    base = logits(tokens, prefix)
    changed_prefix, changed_target = tokens.copy(), tokens.copy()
    changed_prefix[0, 4], changed_target[0, 10] = (tokens[0, 4] + 1) % 128, (tokens[0, 10] + 1) % 128
    assert not np.allclose(logits(changed_prefix, prefix)[0, :4], base[0, :4])
    np.testing.assert_allclose(logits(changed_target, prefix)[0, :10], base[0, :10], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits(tokens, np.zeros_like(prefix)), logits(tokens), rtol=1e-5, atol=1e-6)


def test_a_decoder_trains_on_prefix_lm_with_the_whole_trainer(tmp_path):
    """`--config.objective.name=prefix_lm` on a Llama config: the loss falls and validation
    reports bits per byte over the targets after each prefix, on 8 devices."""
    config = make_tiny_config("llama", vocab_size=512)
    config.objective.name = "prefix_lm"
    config.data.update(glob="json/*.py", val_percent=20, seq_len=32, cache_dir=str(tmp_path / "cache"))
    config.train.update(steps=16, log_every=8, eval_every=16)
    summary = train(config, str(tmp_path / "run"), log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < losses[0]
    assert np.isfinite(summary["final_val_bits_per_byte"])
    # Transformers would read its prompts causally: the export says so.
    from llmjax.interop.export import export_hf  # noqa: PLC0415

    said = []
    export_hf(tmp_path / "run", tmp_path / "hf", log=said.append)
    assert any(line.startswith(f"note: {tmp_path / 'run'} was trained as a prefix LM") for line in said), said


SENTINEL_IDS = np.arange(1000, 1100, dtype=np.int32)  # Outside the documents' token range.


def span_rows(seed=0, seq_len=128, documents_every=150):
    tokens = np.random.default_rng(0).integers(3, 300, 60_000).astype(np.int32)
    tokens[::documents_every] = 2  # EOS.
    config = default_config("t5")
    config.data.seq_len = seq_len
    span = objectives.get("span").impl()
    windows = grain.MapDataset.source(PackedWindows(tokens, span.window_len(config), eos_id=2, pad_id=0))
    ids = {"sentinels": SENTINEL_IDS, "start": 0, "eos": 2}
    return windows, span.rows(windows, config, seed, ids), config


def uncorrupted(inputs, targets):
    """The text an example's inputs and targets were cut from: each sentinel of the inputs
    replaced by what follows the same sentinel in the targets."""
    targets = targets[:-1] if targets[-1] == 2 else targets  # End-of-document ends both sides.
    at = np.flatnonzero(np.isin(targets, SENTINEL_IDS))
    spans = {int(targets[i]): targets[i + 1:j] for i, j in zip(at, [*at[1:], len(targets)])}
    return np.concatenate([spans[int(t)] if t in spans else [t] for t in inputs]).astype(np.int32)


def test_span_corruption_noises_15_percent_in_spans_of_3_and_keeps_examples_apart():
    windows, rows, config = span_rows()
    decoder = span_lengths(config)[2]
    noise = spans = text = dropped = 0
    for g in range(len(windows)):
        window, row = windows[g], rows[g]
        assert row["inputs"].shape == (128,) and row["targets"].shape == (decoder,)
        real = int(row["weights"].sum())
        assert (row["weights"][:real] == 1).all() and (row["weights"][real:] == 0).all()
        examples = np.unique(row["decoder_segment_ids"][:real])
        # Example k is segment k on both sides; padding is one segment more on both.
        np.testing.assert_array_equal(examples, np.unique(row["segment_ids"])[:len(examples)])
        rebuilt = []
        for k in examples:
            enc, dec = row["segment_ids"] == k, row["decoder_segment_ids"] == k
            inputs, targets = row["inputs"][enc], row["targets"][dec]
            # Positions restart in every example; the decoder reads its targets shifted right
            # behind the start token.
            np.testing.assert_array_equal(row["positions"][enc], np.arange(enc.sum()))
            np.testing.assert_array_equal(row["decoder_positions"][dec], np.arange(dec.sum()))
            np.testing.assert_array_equal(row["decoder_inputs"][dec], np.append(0, targets[:-1]))
            sentinels = inputs[np.isin(inputs, SENTINEL_IDS)]
            np.testing.assert_array_equal(sentinels, SENTINEL_IDS[:len(sentinels)])  # In order, from 0.
            np.testing.assert_array_equal(targets[np.isin(targets, SENTINEL_IDS)], sentinels)
            rebuilt.append(uncorrupted(inputs, targets))
            noise += len(targets) - len(sentinels) - (targets[-1] == 2)
            spans += len(sentinels)
            text += len(rebuilt[-1]) - (rebuilt[-1][-1] == 2)
        # The examples are the window's document pieces, in order, less those too short to hold a
        # noise span (a lone end-of-document); the last may be cut to fit, and the rest left out.
        pieces = np.split(window["inputs"], np.flatnonzero(np.diff(window["segment_ids"])) + 1)
        pieces = [p for p in pieces[:len(np.unique(window["segment_ids"][:int(window["length"])]))]
                  if noise_counts(len(p) - (p[-1] == 2), 0.15, 3.0)[1] > 0]
        assert len(rebuilt) <= len(pieces)
        for k, (got, piece) in enumerate(zip(rebuilt, pieces)):
            assert len(got) == len(piece) or k == len(rebuilt) - 1
            np.testing.assert_array_equal(got, piece[:len(got)])
        dropped += sum(map(len, pieces)) - sum(map(len, rebuilt))
    assert dropped < 0.02 * text
    assert text > 50_000
    assert abs(noise / text - 0.15) < 0.005
    assert abs(noise / spans - 3.0) < 0.1


def test_span_rows_are_a_function_of_seed_and_row_index():
    _, rows, _ = span_rows()
    _, again, _ = span_rows()
    _, other_seed, _ = span_rows(seed=1)
    for key in ("inputs", "targets"):
        np.testing.assert_array_equal(rows[5][key], again[5][key])
        assert not np.array_equal(rows[5][key], other_seed[5][key])


def test_span_corruption_without_sentinels_in_the_vocabulary_is_refused(tmp_path):
    plain = train_tokenizer(TEXTS, 300, tmp_path / "tokenizer.json")
    config = default_config("t5")
    with pytest.raises(DataError, match=r"objective span needs 14 sentinel tokens for windows of 285 tokens, "
                                        r"and tokenizer .* lacks <\|sentinel_0\|> / <extra_id_0>"):
        objectives.get("span").impl().token_ids(plain, config)


def test_encoder_and_decoder_lengths_that_do_not_fit_are_refused():
    config = default_config("t5")
    config.data.seq_len = 64
    config.objective.targets_length = 10
    with pytest.raises(ConfigError, match=r"objective.targets_length=10: must be 0 \(derived: 15\) or at least 15"):
        validate(config, 1)
    config.objective.targets_length = 0
    config.mesh.ici.update(data=2, sequence=4)
    with pytest.raises(ConfigError, match=r"a decoder of 15 tokens, which the sequence mesh axis of 4 does not "
                                          r"divide; set objective.targets_length=16"):
        validate(config, 8)
    config.objective.targets_length = 16
    validate(config, 8)
    config.data.seq_len = 66  # The encoder's length must split over the sequence axis as well.
    with pytest.raises(ConfigError, match="data.seq_len=66"):
        validate(config, 8)
    config.mesh.ici.update(data=1, sequence=1)
    config.data.seq_len, config.objective.targets_length = 64, -1
    with pytest.raises(ConfigError, match=r"objective.targets_length=-1: must be 0"):
        validate(config, 1)


def test_objectives_that_would_score_nothing_are_refused_and_empty_evaluations_are_nan():
    """A window with nothing to predict trains on nothing and used to report a val loss of 0,
    which a sweep's report ranks first."""
    t5 = default_config("t5")
    t5.data.seq_len = 2
    with pytest.raises(ConfigError, match=r"data.seq_len=2: leaves a window that ends a document no token"):
        validate(t5, 1)
    t5.data.seq_len = 3
    validate(t5, 1)
    bert = default_config("bert")
    bert.data.seq_len, bert.objective.mask_rate = 64, 0.01
    with pytest.raises(ConfigError, match=r"objective.mask_rate=0.01: chooses 0.64 of a window's 64 tokens"):
        validate(bert, 1)
    for name, sums in (("mlm", [0.0, 0.0, 0.0]), ("causal_lm", [0.0, 0.0]), ("span", [0.0, 0.0, 0.0])):
        metrics = objectives.get(name).impl().metrics(sums, 0.0)
        assert np.isnan(metrics["loss"]) and np.isnan(metrics["perplexity"]), (name, metrics)
