"""The LSTM family's own properties: its recurrence is torch.nn.LSTM's, documents packed into a
row never see one another, it shards over data and fsdp like the transformers, and refuses the
meshes it cannot use. (Overfitting, cached decoding, beam search and exact resume run for every
family in the shared property tests.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax import model
from llmjax.config import ConfigError, validate
from llmjax.flops import param_count
from llmjax.run import abstract_params

from conftest import init_params, make_tiny_config, run_reference
from test_train_step import random_batch, run_steps


_params = init_params


@pytest.mark.parametrize("shape", [dict(hidden_dim=32), dict(hidden_dim=48, proj_dim=32),
                                   dict(hidden_dim=48, proj_dim=24, tie_embeddings=False)])
def test_recurrence_equals_torch_lstm(shape, reference_python, tmp_path):
    config = make_tiny_config("lstm", **shape)
    # Larger weights than the init's, so every gate saturates somewhere and a swapped gate shows.
    params = jax.tree.map(lambda x: 2.0 * x, _params(config))
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (3, 20))
    hidden, _ = model.apply_hidden(params, jnp.asarray(tokens), config=config)
    # The first layer reads the embedding rows at unit variance (1 / init_scale of them).
    weights = {"x": np.asarray(params["embed"]["embedding"])[tokens] / config.model.init_scale}
    for layer in range(config.model.num_layers):
        p = params[f"layers_{layer}"]
        h = config.model.hidden_dim
        weights[f"weight_ih_l{layer}"] = np.asarray(p["input"]["kernel"]).reshape(-1, 4 * h).T
        weights[f"weight_hh_l{layer}"] = np.asarray(p["recurrent"]).reshape(-1, 4 * h).T
        weights[f"bias_ih_l{layer}"] = np.asarray(p["bias"]).reshape(4 * h)
        weights[f"bias_hh_l{layer}"] = np.zeros(4 * h, np.float32)
        if config.model.proj_dim:
            weights[f"weight_hr_l{layer}"] = np.asarray(p["projection"]).T
    np.savez(tmp_path / "in.npz", **weights)
    run_reference(reference_python, "lstm", tmp_path / "in.npz", tmp_path / "out.npy")
    # fp32 rounding in another summation order, compounded over 20 steps; a misplaced gate or
    # bias moves outputs by ~0.1.
    np.testing.assert_allclose(np.asarray(hidden), np.load(tmp_path / "out.npy"), rtol=1e-4, atol=3e-5)


def test_forget_gate_starts_open_and_counts_are_stated():
    config = make_tiny_config("lstm", hidden_dim=48, proj_dim=16, tie_embeddings=False)
    bias = np.asarray(_params(config)["layers_1"]["bias"])
    np.testing.assert_array_equal(bias, np.stack([np.zeros(48), np.ones(48), np.zeros(48), np.zeros(48)]))
    shapes, _ = abstract_params(config)
    assert param_count(config.model) == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def test_packed_documents_do_not_see_one_another():
    config = make_tiny_config("lstm")
    params = _params(config)
    rng = np.random.default_rng(1)
    first, second = rng.integers(0, 128, (1, 7)), rng.integers(0, 128, (1, 9))
    packed = model.apply(params, jnp.asarray(np.concatenate([first, second], 1)), None,
                         jnp.asarray([[1] * 7 + [2] * 9]), config=config)
    alone = [model.apply(params, jnp.asarray(doc), config=config) for doc in (first, second)]
    np.testing.assert_allclose(packed[:, :7], alone[0], atol=1e-6)
    np.testing.assert_allclose(packed[:, 7:], alone[1], atol=1e-6)
    # Without the segment ids the second document does see the first.
    joined = model.apply(params, jnp.asarray(np.concatenate([first, second], 1)), config=config)
    assert np.abs(np.asarray(joined[:, 7:]) - np.asarray(alone[1])).max() > 1e-3


@pytest.mark.parametrize("mesh", [dict(data=8), dict(fsdp=8), dict(data=2, fsdp=4)])
def test_sharded_step_matches_single_device(mesh):
    single = make_tiny_config("lstm")
    single.mesh.ici.update(data=1, fsdp=1, sequence=1, tensor=1)
    sharded = make_tiny_config("lstm")
    sharded.mesh.ici.update(data=1, fsdp=1, sequence=1, tensor=1)
    sharded.mesh.ici.update(**mesh)
    batches = [random_batch(single, seed) for seed in range(4)]
    losses_1, state_1 = run_steps(single, batches, jax.devices()[:1])
    losses_8, state_8 = run_steps(sharded, batches, jax.devices())
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.device_get(state_8.params), jax.device_get(state_1.params))
    # The rules table's layout: input kernels [embed -> fsdp x expert (size 1 here), gates, hidden].
    kernel = state_8.params["layers_0"]["input"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(("fsdp", "expert"), None, None)
    assert kernel.addressable_shards[0].data.shape[0] == 32 // mesh.get("fsdp", 1)


@pytest.mark.parametrize("axis, reason", [("tensor", "all-gather the hidden state"),
                                          ("sequence", "one after another")])
def test_meshes_it_cannot_use_are_refused_with_the_reason(axis, reason):
    config = make_tiny_config("lstm")
    config.mesh.ici.update(data=1, fsdp=1, sequence=1, tensor=1)
    config.mesh.ici[axis] = 2
    with pytest.raises(ConfigError, match=rf"mesh.ici.{axis}=2: the lstm family shards over data and "
                                          rf"fsdp only: .*{reason}.*; set mesh.ici.{axis}=1"):
        validate(config, 2)


def test_a_tied_output_layer_must_fit_the_top_layer():
    config = make_tiny_config("lstm", hidden_dim=48)
    with pytest.raises(ConfigError, match=r"model.tie_embeddings=True: .* 48 wide \(model.hidden_dim\), "
                                          r"not model.d_model=32; set model.proj_dim=32 or model.tie_embeddings=False"):
        validate(config, 1)
