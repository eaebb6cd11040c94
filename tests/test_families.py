"""The family seam: a family defined here, in the test, trains with the whole trainer once it
is registered; every family's stated parameter count is its real one; a field of another
family is refused naming that family."""

import dataclasses
import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import ConfigError, default_config, validate
from llmjax.flops import param_count
from llmjax.model import registry
from llmjax.model.family import Family
from llmjax.model.layers.output import head_output
from llmjax.model.layers.projection import Projection, weight_init
from llmjax.model.spec import ModelSpec
from llmjax.presets import compose
from llmjax.run import abstract_params
from llmjax.train.loop import train

from conftest import FAMILIES, make_tiny_config


@dataclasses.dataclass(frozen=True, kw_only=True)
class BigramSpec(ModelSpec):
    family: str = "bigram"
    hidden: int = 16  # A field only this family has.


class Bigram(nn.Module):
    """Each token predicts the next from its own embedding alone."""
    spec: BigramSpec

    @nn.compact
    def __call__(self, tokens_BT, with_head=True):
        s = self.spec
        embed = nn.Embed(s.vocab_size, s.d_model, param_dtype=s.storage_dtype,
                         embedding_init=weight_init(s, ("vocab", "embed")), name="embed")
        h = Projection(s, (s.d_model, s.hidden), ("embed", "mlp"), name="up")(embed(tokens_BT))
        h = Projection(s, (s.hidden, s.d_model), ("mlp", "embed"), name="down")(jnp.tanh(h))
        return head_output(h, embed.embedding, s, with_head)


def _bigram_math():
    def init(rng, config):
        spec = BigramSpec.from_config(config.model)
        return Bigram(spec).init(rng, jnp.zeros((1, 4), jnp.int32))["params"]

    def apply(params, batch, *, config, with_head=True):
        return Bigram(BigramSpec.from_config(config.model)).apply({"params": params}, batch["inputs"],
                                                                  with_head=with_head)
    return types.SimpleNamespace(init=init, apply=apply)


def _bigram_params(m):
    return m.vocab_size * m.d_model + 2 * m.d_model * m.hidden


BIGRAM = Family(
    name="bigram", spec=BigramSpec, presets={}, math=_bigram_math,
    flops=types.SimpleNamespace(param_count=_bigram_params,
                                non_embedding_params=lambda m: 2 * m.d_model * m.hidden,
                                flops_per_token=lambda m, seq: 6 * _bigram_params(m)))


@pytest.fixture
def bigram():
    registry.register(BIGRAM)
    yield BIGRAM
    registry.unregister("bigram")


def test_a_family_defined_in_a_test_trains_with_the_whole_trainer(bigram, tmp_path):
    config = default_config("bigram")
    config.model.update(vocab_size=512, d_model=32, max_seq_len=64, dtype="float32")
    config.data.update(glob="json/*.py", val_percent=20, seq_len=32, cache_dir=str(tmp_path / "cache"))
    config.train.update(steps=12, global_batch_size=8, log_every=4, eval_every=6, eval_batches=1)
    config.optimizer.update(warmup_steps=2, learning_rate=1e-2)
    config.checkpoint.every_steps = 6
    summary = train(config, str(tmp_path / "run"), log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 3 and losses[-1] < losses[0] < 1.05 * np.log(512)
    assert np.isfinite(summary["final_val_loss"])
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == [6, 12]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert saved["family"] == "bigram" and saved["hidden"] == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_stated_parameter_count_is_the_real_one(family):
    for tie in (True, False):
        config = make_tiny_config(family, tie_embeddings=tie)
        shapes, _ = abstract_params(config)
        assert param_count(config.model) == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("preset, published", [
    ("gpt2", 124_439_808),  # GPT2LMHeadModel.num_parameters() of openai-community/gpt2.
    ("gpt2-medium", 354_823_168),  # ... of gpt2-medium.
    ("bert-base", 109_514_298),  # BertForMaskedLM(BertConfig()).num_parameters(): bert-base-uncased's shape.
    # T5ForConditionalGeneration(google/t5-v1_1-small's and -base's configs).num_parameters() in
    # transformers 5, which ties the output layer to the embedding as llmjax does.
    ("t5-small", 60_511_616),
    ("t5-base", 222_903_552),
    ("t5-small-v1.0", 60_506_624),  # ... of google-t5/t5-small's config (the original T5: ReLU MLP).
])
def test_presets_have_the_published_parameter_counts(preset, published):
    assert param_count(compose(preset).model) == published


def test_a_field_of_another_family_is_refused_naming_it():
    config = default_config("llama")
    config.model.family = "gpt2"  # Llama's fields left behind, the first in order: capacity_factor (MoE).
    with pytest.raises(ConfigError, match=r"model.capacity_factor=0.0: is a field of the llama family, "
                                          r"not of model.family='gpt2'"):
        validate(config, 1)
    with pytest.raises(ConfigError, match=r"config.model.family='rnn': no such model family; choose one of "
                                          r"llama, gpt2"):
        default_config("rnn")
