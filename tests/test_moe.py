"""The mixture-of-experts MLP: routing as Mixtral defines it, dropless and capacity dispatch
against a token-by-token reference, and its auxiliary losses and statistics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.model.layers import moe
from llmjax.model.llama.spec import LlamaSpec

E, K, D, F = 4, 2, 8, 16


def weights(seed=0, experts=E):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=shape) * 0.5, jnp.float32)
            for shape in ((experts, D, F), (experts, D, F), (experts, F, D))]


def reference(x_TD, weights_TK, experts_TK, gate, up, down, kept_TK=None):
    """Each token's chosen experts, one at a time."""
    out = np.zeros_like(np.asarray(x_TD))
    for t in range(x_TD.shape[0]):
        for k in range(experts_TK.shape[1]):
            if kept_TK is not None and not kept_TK[t, k]:
                continue
            e = int(experts_TK[t, k])
            h = jax.nn.silu(x_TD[t] @ gate[e]) * (x_TD[t] @ up[e])
            out[t] += float(weights_TK[t, k]) * np.asarray(h @ down[e])
    return out


def test_topk_softmax_is_mixtrals_renormalised_softmax_and_softmax_topk_keeps_the_probabilities():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(10, E)), jnp.float32)
    w, experts, probs = moe.route(logits, K, "topk_softmax")
    chosen = jnp.take_along_axis(jax.nn.softmax(logits), experts, axis=-1)
    np.testing.assert_allclose(w, chosen / chosen.sum(-1, keepdims=True), rtol=1e-6)  # transformers' Mixtral.
    assert (experts == jnp.argsort(-logits, axis=-1)[:, :K]).all()
    w2, experts2, _ = moe.route(logits, K, "softmax_topk")
    np.testing.assert_allclose(w2, chosen, rtol=1e-6)
    assert (experts2 == experts).all() and float(w2.sum(-1).max()) < 1.0


def test_dropless_dispatch_equals_every_token_through_its_experts():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(24, D)), jnp.float32)
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(24, E)) * 3, jnp.float32)
    w, experts, _ = moe.route(logits, K, "topk_softmax")
    gate, up, down = weights()
    y, dropped = moe.expert_swiglu_dropless(x, w, experts, gate, up, down)
    np.testing.assert_allclose(y, reference(x, w, experts, gate, up, down), rtol=1e-5, atol=1e-5)
    assert float(dropped) == 0.0
    grads = jax.grad(lambda g: jnp.sum(moe.expert_swiglu_dropless(x, w, experts, g, up, down)[0] ** 2))(gate)
    assert bool(jnp.all(jnp.isfinite(grads))) and float(jnp.abs(grads).sum()) > 0


@pytest.mark.parametrize("sizes", [(20, 0, 3, 9), (0, 0, 32, 0), (8, 8, 8, 8), (1, 30, 0, 1)])
def test_cpu_blocks_compute_the_grouped_matmuls_of_ragged_dot(sizes):
    """Groups empty, under a block, over several, and exactly whole: the same rows and gradients."""
    x = jnp.asarray(np.random.default_rng(7).normal(size=(sum(sizes), D)), jnp.float32)
    sizes = jnp.asarray(sizes, jnp.int32)
    gate, up, down = weights()
    assert moe.block_size(sum(sizes), E) == 8
    blocks = lambda x, g: moe.block_swiglu(x, sizes, g, up, down)  # noqa: E731
    ragged = lambda x, g: moe.ragged_swiglu(x, sizes, g, up, down)  # noqa: E731
    np.testing.assert_allclose(blocks(x, gate), ragged(x, gate), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, g: jnp.sum(f(x, g) ** 2)  # noqa: E731
    for ours, theirs in zip(jax.grad(loss(blocks), (0, 1))(x, gate), jax.grad(loss(ragged), (0, 1))(x, gate)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_capacity_dispatch_drops_by_choice_rank_then_token_and_equals_dropless_with_room():
    t = 24
    x = jnp.asarray(np.random.default_rng(3).normal(size=(t, D)), jnp.float32)
    # Skewed routing: expert 0 is everyone's favourite.
    logits = jnp.asarray(np.random.default_rng(4).normal(size=(t, E)) + np.array([3.0, 0, 0, 0]), jnp.float32)
    w, experts, _ = moe.route(logits, K, "topk_softmax")
    gate, up, down = weights()
    roomy, dropped = moe.expert_swiglu_capacity(x, w, experts, gate, up, down, factor=E / K)  # Capacity t.
    np.testing.assert_allclose(roomy, moe.expert_swiglu_dropless(x, w, experts, gate, up, down)[0],
                               rtol=1e-5, atol=1e-5)
    assert float(dropped) == 0.0
    factor = 1.0
    c = moe.capacity(t, K, E, factor)
    kept, used = np.zeros((t, K), bool), np.zeros(E, int)
    for k in range(K):  # Every token's first choice before anyone's second.
        for token in range(t):
            e = int(experts[token, k])
            kept[token, k] = used[e] < c
            used[e] += 1
    y, dropped = moe.expert_swiglu_capacity(x, w, experts, gate, up, down, factor=factor)
    assert 0 < float(dropped) == pytest.approx(1 - kept.mean())
    np.testing.assert_allclose(y, reference(x, w, experts, gate, up, down, kept), rtol=1e-5, atol=1e-5)


def test_auxiliary_losses_follow_their_definitions():
    rng = np.random.default_rng(5)
    logits = jnp.asarray(rng.normal(size=(32, E)), jnp.float32)
    _, experts, probs = moe.route(logits, K, "topk_softmax")
    one_hot = np.eye(E)[np.asarray(experts)]  # [T, K, E]
    expected = E * np.sum(one_hot.mean(0) * np.asarray(probs).mean(0)[None])
    assert float(moe.load_balancing_loss(probs, experts, E)) == pytest.approx(expected, rel=1e-5)
    balanced = jnp.tile(jnp.arange(E), 8)[:, None]  # Each expert a quarter of the tokens, uniform probabilities.
    assert float(moe.load_balancing_loss(jnp.full((32, E), 1 / E), balanced, E)) == pytest.approx(1.0)
    z = np.log(np.exp(np.asarray(logits)).sum(-1)) ** 2
    assert float(moe.router_z_loss(logits)) == pytest.approx(z.mean(), rel=1e-5)


@pytest.mark.parametrize("capacity_factor", [0.0, 1.25])
@pytest.mark.parametrize("shared", [0, 1])
def test_the_moe_layer_reports_its_routing_and_trains_its_router(capacity_factor, shared):
    spec = LlamaSpec(d_model=D, num_layers=2, num_heads=1, num_kv_heads=1, head_dim=D, dtype="float32")
    layer = moe.MoeMlp(spec, moe.MoeShape(num_experts=E, top_k=K, expert_dim=F, capacity_factor=capacity_factor,
                                          num_shared_experts=shared))
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 12, D)), jnp.float32)
    params = nn.unbox(layer.init(jax.random.key(0), x))["params"]
    assert params["gate"].shape == (E, D, F) and ("shared_gate" in params) == bool(shared)
    y, stats = layer.apply({"params": params}, x)
    assert y.shape == x.shape
    assert stats["expert_fraction"].shape == (E,) and float(stats["expert_fraction"].sum()) == pytest.approx(1.0)
    assert float(stats["load_balancing_loss"]) > 0 and float(stats["router_z_loss"]) > 0
    dropped = float(stats["dropped_fraction"])
    assert dropped == 0.0 if capacity_factor == 0.0 else 0.0 <= dropped < 0.5

    def loss(p):
        out, s = layer.apply({"params": p}, x)
        return jnp.sum(out ** 2) + 0.01 * s["load_balancing_loss"]
    router_grad = jax.grad(loss)(params)["router"]["kernel"]
    assert float(jnp.abs(router_grad).sum()) > 0  # Through the routing weights and the balancing loss.
