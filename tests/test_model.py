"""Properties of the model that hold for any correct Llama: checked against independent
reference computations, not against the model's own earlier output."""

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from llmjax.errors import ConfigError

from llmjax import cpu_runtime, model
from llmjax.model.layers.attention import (attention_kernel, recorded_kernels, bidirectional_attention,
                                          select_attention_impl)
from llmjax.model.llama.model import Attention
from llmjax.model.layers.blockwise import blockwise_attention
from llmjax.model.layers.rope import apply_rope, rope_tables
from llmjax.model.llama.spec import LlamaSpec
from llmjax.model.layers.splash import splash_attention, splash_available

from conftest import init_params, make_tiny_config, unstack_layers


def _tokens(config, batch=2, length=16, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, config.model.vocab_size)


_params = init_params


def test_init_on_a_concrete_key_runs_as_one_compiled_program(tiny_config, monkeypatch):
    """Eagerly, the initialiser dispatches its random-number ops one by one (seconds to a
    minute); called outside any trace, `model.init` traces the family's init and compiles it.
    The parameters are those the run's jitted initialiser makes."""
    seen, traced = [], model._init
    monkeypatch.setattr(model, "_init", lambda rng, config: seen.append(rng) or traced(rng, config))
    boxed = model.init(jax.random.key(0), tiny_config)
    assert len(seen) == 1 and isinstance(seen[0], jax.core.Tracer)
    expected = jax.jit(lambda rng: nn.unbox(model.init(rng, tiny_config)),
                       compiler_options=cpu_runtime.for_one_call())(jax.random.key(0))
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), nn.unbox(boxed), expected)))


def test_logits_shape_and_dtype(tiny_config):
    logits = model.apply(_params(tiny_config), _tokens(tiny_config), config=tiny_config)
    assert logits.shape == (2, 16, tiny_config.model.vocab_size)
    assert logits.dtype == jnp.float32


def test_params_carry_logical_axes(tiny_config):
    boxed = model.init(jax.random.key(0), tiny_config)
    specs = nn.get_partition_spec(boxed)
    assert specs["embed"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
    assert specs["layers"]["attention"]["query"]["kernel"] == jax.sharding.PartitionSpec(
        "layers", "embed", "heads", "head_dim")
    assert specs["layers"]["mlp"]["down"]["kernel"] == jax.sharding.PartitionSpec("layers", "mlp", "embed")
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_causality(dtype):
    config = make_tiny_config(dtype=dtype)
    params = _params(config)
    tokens = _tokens(config)
    t = 9
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % config.model.vocab_size)
    before = model.apply(params, tokens, config=config)
    after = model.apply(params, changed, config=config)
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert not np.allclose(before[:, t:], after[:, t:])


def test_segment_ids_block_attention_across_documents(tiny_config):
    params = _params(tiny_config)
    tokens = _tokens(tiny_config, batch=1)
    segments = jnp.array([[0] * 6 + [1] * 10])
    positions = jnp.array([list(range(6)) + list(range(10))])
    packed = model.apply(params, tokens, positions, segments, config=tiny_config)
    # The second document alone, as if it were its own sequence, gives the same logits.
    alone = model.apply(params, tokens[:, 6:], config=tiny_config)
    np.testing.assert_allclose(packed[:, 6:], alone, rtol=1e-5, atol=1e-5)
    # Changing the first document leaves the second untouched, although it comes earlier.
    other_first = tokens.at[:, :6].set((tokens[:, :6] + 3) % tiny_config.model.vocab_size)
    repacked = model.apply(params, other_first, positions, segments, config=tiny_config)
    np.testing.assert_array_equal(packed[:, 6:], repacked[:, 6:])
    unmasked = model.apply(params, other_first, positions, None, config=tiny_config)
    assert not np.allclose(unmasked[:, 6:], packed[:, 6:])


def test_rope_scores_depend_only_on_relative_position():
    key_q, key_k = jax.random.split(jax.random.key(3))
    q = jax.random.normal(key_q, (1, 1, 1, 16))
    k = jax.random.normal(key_k, (1, 1, 1, 16))

    def score(m, n):
        rq = apply_rope(q, rope_tables(jnp.array([[m]]), 16, 10_000.0))
        rk = apply_rope(k, rope_tables(jnp.array([[n]]), 16, 10_000.0))
        return float(jnp.sum(rq * rk))

    assert score(5, 2) == pytest.approx(score(105, 102), rel=1e-4)
    assert score(7, 7) == pytest.approx(score(0, 0), rel=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)
    # A rotation keeps the norm.
    np.testing.assert_allclose(jnp.linalg.norm(apply_rope(q, rope_tables(jnp.array([[37]]), 16, 1e4))),
                               jnp.linalg.norm(q), rtol=1e-5)


def _reference_attention(params, x, positions, spec):
    """Plain multi-head attention written out by hand: softmax(q k^T / sqrt(h)) v with a causal
    mask, each query head using key/value head (head // group)."""
    q = jnp.einsum("btd,dnh->btnh", x, params["query"]["kernel"])
    k = jnp.einsum("btd,dkh->btkh", x, params["key"]["kernel"])
    v = jnp.einsum("btd,dkh->btkh", x, params["value"]["kernel"])
    tables = rope_tables(positions, spec.head_dim, spec.rope_theta)
    q, k = apply_rope(q, tables), apply_rope(k, tables)
    group = spec.num_heads // spec.num_kv_heads
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(spec.head_dim)
    length = x.shape[1]
    scores = jnp.where(jnp.tril(jnp.ones((length, length), bool)), scores, -jnp.inf)
    out = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(scores, axis=-1), v)
    return jnp.einsum("btnh,nhd->btd", out, params["out"]["kernel"])


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_matches_hand_written_reference(kv_heads):
    config = make_tiny_config(num_kv_heads=kv_heads)
    spec = LlamaSpec.from_config(config.model)
    x = jax.random.normal(jax.random.key(0), (2, 12, spec.d_model))
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    module = Attention(spec)
    rope = rope_tables(positions, spec.head_dim, spec.rope_theta)
    params = nn.unbox(module.init(jax.random.key(1), x, rope, None))["params"]
    ours = module.apply({"params": params}, x, rope, None)
    np.testing.assert_allclose(ours, _reference_attention(params, x, positions, spec), rtol=1e-5, atol=1e-5)


def test_gqa_with_all_kv_heads_is_multi_head_attention():
    """With num_kv_heads == num_heads no head is shared: it is exactly multi-head attention,
    so the same weights give the same output as the reference with no repetition."""
    config = make_tiny_config(num_kv_heads=4)
    spec = LlamaSpec.from_config(config.model)
    assert spec.num_kv_heads == spec.num_heads
    x = jax.random.normal(jax.random.key(2), (1, 8, spec.d_model))
    positions = jnp.arange(8)[None]
    module = Attention(spec)
    rope = rope_tables(positions, spec.head_dim, spec.rope_theta)
    params = nn.unbox(module.init(jax.random.key(3), x, rope, None))["params"]
    assert params["key"]["kernel"].shape == params["query"]["kernel"].shape
    np.testing.assert_allclose(module.apply({"params": params}, x, rope, None),
                               _reference_attention(params, x, positions, spec), rtol=1e-5, atol=1e-5)


def test_logits_rounded_to_bf16_unless_fp32_logits():
    """model.fp32_logits=False rounds the output projection to the compute dtype, as bf16
    autocast does; the logits still come back as fp32 for the loss."""
    rounded, kept = (make_tiny_config(dtype="bfloat16", fp32_logits=flag) for flag in (False, True))
    params = _params(kept)
    logits = {flag: model.apply(params, _tokens(kept), config=config)
              for flag, config in ((False, rounded), (True, kept))}
    assert logits[False].dtype == logits[True].dtype == jnp.float32
    np.testing.assert_array_equal(logits[False], logits[False].astype(jnp.bfloat16).astype(jnp.float32))
    assert not np.array_equal(logits[True], logits[True].astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(logits[False], logits[True], rtol=1e-2, atol=1e-2)


def test_loss_at_init_is_close_to_log_vocab():
    config = make_tiny_config(vocab_size=1024)
    logits = model.apply(_params(config), _tokens(config, batch=4), config=config)
    targets = _tokens(config, batch=4, seed=7)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1).mean()
    assert abs(float(nll) - np.log(1024)) < 0.05 * np.log(1024)


@pytest.mark.parametrize("remat,scan_unroll", [("none", 0), ("none", 1), ("full", 1), ("save_dots", 0)])
def test_scanned_and_unrolled_layers_agree(remat, scan_unroll):
    scanned = make_tiny_config(scan_layers=True, remat=remat, scan_unroll=scan_unroll)
    unrolled = make_tiny_config(scan_layers=False, remat=remat)
    params = _params(scanned)
    tokens = _tokens(scanned)
    unrolled_params = unstack_layers(params, scanned.model.num_layers)
    assert jax.tree.structure(unrolled_params) == jax.tree.structure(_params(unrolled))
    np.testing.assert_allclose(model.apply(params, tokens, config=scanned),
                               model.apply(unrolled_params, tokens, config=unrolled), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "save_dots", "save_dots_no_batch"])
def test_remat_policies_leave_gradients_unchanged(remat):
    base, rematted = make_tiny_config(), make_tiny_config(remat=remat)
    params, tokens = _params(base), _tokens(base)

    def grads(config):
        return jax.grad(lambda p: model.apply(p, tokens, config=config).mean())(params)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 grads(base), grads(rematted))


def test_scanned_program_does_not_grow_with_depth_when_looped():
    """What keeps compile time flat in depth (scripts/compile_depth.py times it): with
    model.scan_unroll=1 the scanned model's gradient program is one block in a loop, whatever
    the layer count. Unrolled, or scanned with the default scan_unroll=0 (the whole stack in
    one iteration: no loop, so no activations copied into stacked buffers), it grows with
    every layer up to 16 layers, beyond which the default loops too."""
    def program(layers, **fields):
        config = make_tiny_config(num_layers=layers, **fields)
        params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), config)))
        tokens = jax.ShapeDtypeStruct((2, 16), jnp.int32)
        loss = lambda p, t: model.apply(p, t, config=config).mean()  # noqa: E731
        return jax.jit(jax.grad(loss)).lower(params, tokens).as_text()

    def size(layers, **fields):
        return len(program(layers, **fields))

    assert size(16, scan_unroll=1) < 1.05 * size(2, scan_unroll=1)
    assert "stablehlo.while" in program(2, scan_unroll=1)
    assert size(16) > 4 * size(2)
    assert "stablehlo.while" not in program(16)
    assert "stablehlo.while" in program(17)
    assert size(16, scan_layers=False) > 4 * size(2, scan_layers=False)


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in its equations' params."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_fp32_logits_backward_products_run_in_the_compute_dtype():
    """With fp32 logits, only the forward output projection is an fp32-output product: the
    gradient the loss forms in fp32 is rounded to bf16 before both backward products (an
    fp32 cotangent would make them fp32 matmuls), and the gradients stay close to those of
    plain autodiff through the fp32 product."""
    from llmjax.model.layers.output import fp32_product  # noqa: PLC0415
    x = jax.random.normal(jax.random.key(0), (64, 32)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (96, 32)).astype(jnp.bfloat16)
    loss = lambda f: lambda x, w: jax.nn.logsumexp(f(x, w), axis=-1).sum()  # noqa: E731
    plain = lambda x, w: jnp.dot(x, w.T, preferred_element_type=jnp.float32)  # noqa: E731
    assert fp32_product(x, w).dtype == jnp.float32
    np.testing.assert_array_equal(fp32_product(x, w), plain(x, w))
    jaxpr = jax.make_jaxpr(jax.grad(loss(fp32_product), argnums=(0, 1)))(x, w)
    dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    backward = [e for e in dots if e.params["preferred_element_type"] != jnp.float32]
    assert len(backward) == 2
    assert all(v.aval.dtype == jnp.bfloat16 for e in backward for v in e.invars)
    ours = jax.grad(loss(fp32_product), argnums=(0, 1))(x, w)
    reference = jax.grad(loss(plain), argnums=(0, 1))(x, w)
    for a, b in zip(ours, reference):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), rtol=2e-2, atol=2e-2)


def test_untied_embeddings_have_their_own_output_projection():
    config = make_tiny_config(tie_embeddings=False)
    params = _params(config)
    assert params["lm_head"].shape == (config.model.vocab_size, config.model.d_model)
    zeroed = dict(params, lm_head=jnp.zeros_like(params["lm_head"]))
    np.testing.assert_array_equal(model.apply(zeroed, _tokens(config), config=config), 0.0)


@pytest.mark.parametrize("platform, dtype, head_dim, length, splash, expected", [
    ("gpu", jnp.bfloat16, 64, 512, False, "cudnn"),
    ("gpu", jnp.float16, 128, 100, False, "cudnn"),
    ("gpu", jnp.float32, 64, 512, False, "xla"),  # cuDNN's flash kernel is 16-bit only.
    ("gpu", jnp.bfloat16, 256, 512, False, "xla"),  # Head dims above 128: unsupported.
    ("gpu", jnp.bfloat16, 60, 512, False, "xla"),  # Not a multiple of 8.
    ("tpu", jnp.bfloat16, 128, 2048, True, "splash"),
    ("tpu", jnp.float32, 64, 512, True, "splash"),
    ("tpu", jnp.bfloat16, 128, 2048, False, "xla"),  # No splash kernel in this JAX: the fallback.
    ("tpu", jnp.bfloat16, 128, 200, True, "xla"),  # Length not a multiple of its 128-wide blocks.
    ("tpu", jnp.bfloat16, 128, 200, False, "xla"),
    ("cpu", jnp.bfloat16, 64, 512, True, "blockwise"),
    ("cpu", jnp.float32, 64, 100, False, "blockwise"),
    ("rocm", jnp.bfloat16, 64, 512, False, "xla"),  # Any other platform: XLA's reference path.
])
def test_auto_attention_picks_each_platforms_kernel(platform, dtype, head_dim, length, splash,
                                                    expected):
    assert select_attention_impl("auto", platform, dtype, head_dim, length, splash) == expected


@pytest.mark.parametrize("platform, requested, dtype, expected", [
    ("tpu", "auto", jnp.bfloat16, "xla"),  # Splash takes neither a bias nor a per-row prefix.
    ("tpu", "splash", jnp.bfloat16, "xla"),
    ("gpu", "auto", jnp.bfloat16, "cudnn"),  # cuDNN takes a bias.
    ("cpu", "auto", jnp.bfloat16, "blockwise"),  # So does the blockwise kernel.
])
def test_attention_with_a_bias_or_prefix_picks_a_kernel_that_takes_one(platform, requested, dtype, expected):
    assert select_attention_impl(requested, platform, dtype, 64, 512, True, bias_or_prefix=True) == expected
    if platform == "tpu":
        assert select_attention_impl(requested, platform, dtype, 64, 512, True) == "splash"


def test_explicit_attention_choice_is_honoured_where_the_platform_has_it():
    assert select_attention_impl("xla", "gpu", jnp.bfloat16, 64, 512, True) == "xla"
    assert select_attention_impl("cudnn", "gpu", jnp.float32, 64, 512, False) == "cudnn"
    assert select_attention_impl("splash", "tpu", jnp.float32, 64, 512, True) == "splash"
    for impl, platform, splash in (("cudnn", "cpu", False), ("splash", "gpu", True), ("splash", "tpu", False)):
        with pytest.raises(ConfigError, match=f"model.attention_impl='{impl}': .* only"):
            select_attention_impl(impl, platform, jnp.float32, 64, 512, splash)


def test_splash_is_found_in_this_jax():
    """The lookup itself, so the TPU case above is not only ever fed a constant."""
    assert splash_available()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_splash_kernel_matches_xla_attention_with_documents(kv_heads, causal):
    """The TPU kernel's own code, run by the Pallas interpreter on CPU: causal or bidirectional,
    two documents per row, grouped-query heads; outputs and gradients equal XLA's reference
    attention."""
    b, t, n, h = 2, 256, 4, 8
    q = jax.random.normal(jax.random.key(0), (b, t, n, h))
    k, v = (jax.random.normal(jax.random.key(i), (b, t, kv_heads, h)) for i in (1, 2))
    segments = jnp.asarray(np.repeat([[0, 1]], b, 0).repeat(t // 2, 1), jnp.int32)

    def xla(q, k, v):
        mask = segments[:, None, :, None] == segments[:, None, None, :]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)

    def kernel(q, k, v):
        return splash_attention(q, k, v, segments, interpret=True, causal=causal)

    np.testing.assert_allclose(kernel(q, k, v), xla(q, k, v), rtol=1e-4, atol=1e-5)
    loss = lambda f: lambda *qkv: (f(*qkv) * jnp.cos(jnp.arange(h))).sum()  # noqa: E731
    for ours, reference in zip(jax.grad(loss(kernel), argnums=(0, 1, 2))(q, k, v),
                               jax.grad(loss(xla), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)

@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length, block", [(40, 16), (32, 8), (16, 16)])
@pytest.mark.parametrize("documents", [True, False])
def test_blockwise_attention_equals_xla_attention(length, block, documents, causal):
    """Blocks of queries against only the keys they may see, with a hand-written backward
    pass: the same attention and the same gradients, causal and bidirectional, with documents
    and grouped-query heads, including a last block shorter than the others."""
    b, n, h, kv_heads = 2, 4, 8, 2
    q = jax.random.normal(jax.random.key(0), (b, length, n, h))
    k, v = (jax.random.normal(jax.random.key(i), (b, length, kv_heads, h)) for i in (1, 2))
    segments = jnp.asarray((np.arange(length) >= length // 3)[None].repeat(b, 0), jnp.int32)
    mask = segments[:, None, :, None] == segments[:, None, None, :]
    if not documents:
        segments, mask = None, None
    _assert_same_attention(lambda q, k, v: blockwise_attention(q, k, v, segments, block, causal),
                           lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal),
                           q, k, v)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias_rows", [1, 2])
def test_blockwise_attention_with_a_score_bias_equals_xla_attention(causal, bias_rows):
    """T5's relative position bias (shared by the batch, or one per row) on unscaled scores,
    causal or not, with documents and a last block shorter than the others: the same outputs
    and gradients as XLA's attention, the bias's gradient included."""
    b, t, n, h = 2, 40, 4, 8
    q, k, v = (jax.random.normal(jax.random.key(i), (b, t, n, h)) for i in range(3))
    bias = jax.random.normal(jax.random.key(4), (bias_rows, n, t, t))
    segments = jnp.asarray((np.arange(t) >= 13)[None].repeat(b, 0), jnp.int32)
    mask = segments[:, None, :, None] == segments[:, None, None, :]
    ours = lambda q, k, v, bias: blockwise_attention(q, k, v, segments, 16, causal, None, None, bias, 1.0)  # noqa: E731
    xla = lambda q, k, v, bias: jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal,  # noqa: E731
                                                             scale=1.0)
    np.testing.assert_allclose(ours(q, k, v, bias), xla(q, k, v, bias), rtol=1e-5, atol=1e-6)
    weights = jax.random.normal(jax.random.key(5), q.shape)
    loss = lambda f: lambda *args: (f(*args) * weights).sum()  # noqa: E731
    for mine, theirs in zip(jax.grad(loss(ours), argnums=(0, 1, 2, 3))(q, k, v, bias),
                            jax.grad(loss(xla), argnums=(0, 1, 2, 3))(q, k, v, bias)):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["blockwise", "xla"])
def test_cross_attention_keeps_packed_examples_apart(impl):
    """Queries of one sequence over keys of another (T5's cross-attention), each side packed
    with its own segment ids: the same as attending to each example's keys on its own."""
    b, t, s, n, h = 2, 24, 40, 2, 8
    q = jax.random.normal(jax.random.key(0), (b, t, n, h))
    k, v = (jax.random.normal(jax.random.key(i), (b, s, n, h)) for i in (1, 2))
    q_segments = jnp.asarray((np.arange(t) >= 10)[None].repeat(b, 0), jnp.int32)
    kv_segments = jnp.asarray((np.arange(s) >= 25)[None].repeat(b, 0), jnp.int32)
    with nn.logical_axis_rules(()):
        packed = bidirectional_attention(q, k, v, q_segments, impl, kv_segment_ids_BS=kv_segments)
    for qs, ks in ((slice(0, 10), slice(0, 25)), (slice(10, t), slice(25, s))):
        alone = jax.nn.dot_product_attention(q[:, qs], k[:, ks], v[:, ks])
        np.testing.assert_allclose(packed[:, qs], alone, rtol=1e-5, atol=1e-6)
    mask = q_segments[:, None, :, None] == kv_segments[:, None, None, :]
    _assert_same_attention(lambda q, k, v: blockwise_attention(q, k, v, q_segments, 8, False, kv_segments),
                           lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask), q, k, v)


@pytest.mark.parametrize("impl", ["blockwise", "xla"])
def test_prefix_attention_sees_the_whole_prefix_and_the_past(impl):
    """Prefix LM's mask, per document: a key is seen by every query of its document when it is
    in the document's prefix, else only by the queries at or after it. Both CPU paths equal
    XLA's attention with that mask written out (outputs and gradients)."""
    b, t, n, h = 2, 40, 4, 8
    q = jax.random.normal(jax.random.key(0), (b, t, n, h))
    k, v = (jax.random.normal(jax.random.key(i), (b, t, 2, h)) for i in (1, 2))
    segments = jnp.asarray((np.arange(t) >= 17)[None].repeat(b, 0), jnp.int32)
    offset = np.where(np.arange(t) >= 17, np.arange(t) - 17, np.arange(t))
    prefix = jnp.asarray(offset[None] < np.array([[5], [11]]), jnp.int32)  # Per row, per document.
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    mask = (segments[:, None, :, None] == segments[:, None, None, :]) & ((j <= i) | prefix[:, None, None, :].astype(bool))
    _assert_same_attention(lambda q, k, v: attention_kernel(q, k, v, segments, segments, impl, True, prefix),
                           lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask), q, k, v)


def _assert_same_attention(ours, reference, q, k, v):
    """Equal outputs, and equal gradients of a random projection of them."""
    np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-6)
    weights = jax.random.normal(jax.random.key(3), q.shape)
    loss = lambda f: lambda *qkv: (f(*qkv) * weights).sum()  # noqa: E731
    for mine, theirs in zip(jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v),
                            jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5)


def test_blockwise_attention_in_bf16_stays_close_to_fp32():
    """In bf16 the backward pass reuses the forward's bf16 probabilities: its gradients stay as
    close to the fp32 ones as those of XLA's own attention in bf16."""
    b, t, n, h = 2, 64, 4, 16
    q, k, v = (jax.random.normal(jax.random.key(i), (b, t, n, h)) for i in range(3))
    weights = jax.random.normal(jax.random.key(3), q.shape)

    def grads(f, dtype):
        loss = lambda *qkv: (f(*qkv).astype(jnp.float32) * weights).sum()  # noqa: E731
        return jax.grad(loss, argnums=(0, 1, 2))(*(x.astype(dtype) for x in (q, k, v)))

    xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    ours = lambda q, k, v: blockwise_attention(q, k, v, None, 16)  # noqa: E731
    exact = grads(xla, jnp.float32)
    for mine, theirs, reference in zip(grads(ours, jnp.bfloat16), grads(xla, jnp.bfloat16), exact):
        error = lambda g, reference=reference: float(jnp.abs(g.astype(jnp.float32) - reference).max())  # noqa: E731
        assert mine.dtype == jnp.bfloat16
        assert error(mine) <= 2 * error(theirs) + 1e-3, (error(mine), error(theirs))


@pytest.mark.parametrize(("family", "objective", "expected"), [
    ("llama", None, {"causal: blockwise"}), ("llama", "prefix_lm", {"prefix: blockwise"}),
    ("bert", None, {"bidirectional: blockwise"}), ("t5", None, {"bidirectional: blockwise", "position-biased: blockwise"})])
def test_the_attention_kernels_a_model_traces_are_recorded_for_the_run_to_print(family, objective, expected):
    from test_train_step import random_batch  # noqa: PLC0415

    config = make_tiny_config(family)
    if objective:
        config.objective.name = objective
    batch = random_batch(config)
    if objective == "prefix_lm":
        batch["prefix"] = np.zeros_like(batch["inputs"])
    params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), config)))
    with recorded_kernels() as kernels:
        jax.eval_shape(lambda p, b: model.forward(p, b, config=config), params, batch)
    assert kernels == expected


def test_t5_may_name_the_blockwise_kernel_which_takes_its_position_bias():
    """What `auto` picks on CPU, named: accepted, and traced for the biased scores as well."""
    from llmjax.config import validate  # noqa: PLC0415
    from test_train_step import random_batch  # noqa: PLC0415

    config = make_tiny_config("t5")
    config.model.attention_impl = "blockwise"
    validate(config, jax.device_count())
    params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), config)))
    with recorded_kernels() as kernels:
        jax.eval_shape(lambda p, b: model.forward(p, b, config=config), params, random_batch(config))
    assert kernels == {"bidirectional: blockwise", "position-biased: blockwise"}
