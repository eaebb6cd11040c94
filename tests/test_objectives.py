"""The objectives' rows: MLM's corruption rates on a large sample, special tokens never
chosen, and every row a pure function of (seed, row index); a tokenizer without the tokens an
objective needs is refused by name."""

import grain
import numpy as np
import pytest

from llmjax.config import ConfigError, default_config, validate
from llmjax.data.errors import DataError
from llmjax.data.pipeline import PackedWindows
from llmjax.data.tokenizer import MASK, train_tokenizer
from llmjax.train import objectives

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
