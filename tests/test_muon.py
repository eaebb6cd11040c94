"""Muon: which parameters it takes, as which matrices, and that its updates are orthogonalised
matrices (tests/test_train_step.py trains every family with it, and on sharded meshes)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmjax.run import abstract_params
from llmjax.train import muon
from llmjax.train.optimizer import build_optimizer

from conftest import FAMILIES, MOE, make_tiny_config


def muon_config(family="llama", **model):
    config = make_tiny_config(family, **model)
    config.optimizer.name = "muon"
    return config


@pytest.mark.parametrize("family", FAMILIES + tuple(MOE))
def test_every_hidden_matrix_and_nothing_else_is_muons(family):
    params, axes = abstract_params(muon_config(family))
    matrices = muon.matrices(axes)
    names = {"/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    experts = {n for n in names if "mlp/" in n and n.split("/")[-1] in ("gate", "up", "down")}
    assert bool(experts) == (family in MOE)  # An MoE layer's expert weights [layers, experts, in, out].
    kernels = {n for n in names if n.split("/")[-1] in ("kernel", "recurrent")} | experts
    assert set(matrices) == kernels and kernels
    # Embeddings, norms, biases, T5's position biases stay with AdamW.
    assert not any("embed" in n.split("/")[0] or "norm" in n or n.endswith("bias") for n in matrices)


def test_matrices_are_read_from_the_logical_axes():
    dims = muon.dimension_numbers
    # Rows are the input: the embedding for a projection reading the residual stream...
    assert dims("layers/attention/query/kernel", ("layers", "embed", "heads", "head_dim")) == \
        optax.contrib.MuonDimensionNumbers((1,), (2, 3))
    # ... everything but it for one writing it.
    assert dims("layers/attention/out/kernel", ("layers", "heads", "head_dim", "embed")) == \
        optax.contrib.MuonDimensionNumbers((1, 2), (3,))
    # Fused q/k/v and the LSTM's gates are one matrix each.
    assert dims("layers/attention/qkv/kernel", ("layers", "embed", "qkv", "heads", "head_dim")) == \
        optax.contrib.MuonDimensionNumbers((1,), (3, 4))
    assert dims("layers_1/recurrent", ("lstm_in", "gates", "lstm_hidden")) == optax.contrib.MuonDimensionNumbers((0,), (2,))
    # Each expert's projection is a matrix of its own.
    assert dims("layers/mlp/down", ("layers", "experts", "mlp", "embed")) == optax.contrib.MuonDimensionNumbers((2,), (3,))
    assert dims("task_head/kernel", ("embed", None)) is None  # An output layer.
    assert dims("embed/embedding", ("vocab", "embed")) is None


def test_an_update_is_an_orthogonalised_matrix_per_layer_and_adamw_elsewhere():
    config = muon_config()
    config.optimizer.update(grad_clip=0.0, weight_decay=0.0, warmup_steps=0, schedule="constant", learning_rate=1.0)
    params, axes = abstract_params(config)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params)
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    tx = build_optimizer(config, axes)
    updates, _ = tx.update(grads, tx.init(params), params)
    query = np.asarray(updates["layers"]["attention"]["query"]["kernel"])  # [layers, embed, heads, head_dim]
    for layer in query:
        singular = np.linalg.svd(layer.reshape(layer.shape[0], -1), compute_uv=False)
        # Newton-Schulz's quintic takes singular values to 0.7-1.2 (all but the few a random
        # square matrix has near 0, which it only lifts), times 0.2 x sqrt(max side) for the RMS.
        relative = singular / (0.2 * np.sqrt(max(layer.shape[0], layer[0].size)))
        assert np.mean((relative > 0.65) & (relative < 1.25)) > 0.9 and relative.max() < 1.25, relative
    adamw = optax.adamw(1.0, b1=config.optimizer.b1, b2=config.optimizer.b2, eps=config.optimizer.eps,
                        weight_decay=0.0)
    expected, _ = adamw.update(grads["embed"], adamw.init(params["embed"]), params["embed"])
    np.testing.assert_allclose(updates["embed"]["embedding"], expected["embedding"], rtol=1e-6)
