"""The pure train step: it learns, it is invariant to the mesh and to gradient accumulation,
and it refuses non-finite updates."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax import model
from llmjax.data import pipeline
from llmjax.run import bootstrap
from llmjax.train.objectives.cross_entropy import chunked_cross_entropy_sums, cross_entropy_sums
from llmjax.train.optimizer import build_optimizer, learning_rate_schedule

from conftest import FAMILIES, MOE, TRANSFORMERS, init_params, make_tiny_config


def random_batch(config, seed=0):
    """Random tokens in two documents a row, as the config's objective sees them: next-token
    targets (causal LM), 15% of the tokens replaced by a mask token and predicted (MLM), or
    random decoder inputs and targets of their own length, two examples a row (span)."""
    rng = np.random.default_rng(seed)
    b, t = config.train.global_batch_size, config.data.seq_len
    tokens = rng.integers(0, config.model.vocab_size, (b, t + 1)).astype(np.int32)
    segment_ids = np.repeat(np.arange(2, dtype=np.int32), t // 2)[None].repeat(b, 0)
    positions = np.tile(np.concatenate([np.arange(t // 2), np.arange(t - t // 2)]), (b, 1))
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": positions.astype(np.int32),
             "segment_ids": segment_ids, "weights": np.ones((b, t), np.float32)}
    if config.objective.name == "mlm":
        chosen = rng.random((b, t)) < 0.15
        batch |= {"inputs": np.where(chosen, config.model.vocab_size - 1, tokens[:, :-1]).astype(np.int32),
                  "targets": tokens[:, :-1], "weights": chosen.astype(np.float32)}
    if config.objective.name == "span":
        d = config.objective.targets_length
        decoder = rng.integers(0, config.model.vocab_size, (b, d + 1)).astype(np.int32)
        batch |= {"decoder_inputs": decoder[:, :-1], "targets": decoder[:, 1:],
                  "decoder_positions": np.tile(np.concatenate([np.arange(d // 2), np.arange(d - d // 2)]), (b, 1)),
                  "decoder_segment_ids": np.repeat(np.arange(2, dtype=np.int32), d // 2)[None].repeat(b, 0),
                  "weights": np.ones((b, d), np.float32)}
    return batch


def train_metrics(config, batches, devices=None):
    """Trains on `batches` over the given devices; returns (every step's metrics, final state)."""
    run = bootstrap(config, devices=devices)
    state = run.create_state()
    train_fn = run.lower_train_step().compile()
    metrics = []
    for batch in batches:
        state, step_metrics = train_fn(state, pipeline.to_device(batch, run.batch_shardings()))
        metrics.append(jax.device_get(step_metrics))
    return metrics, state


def run_steps(config, batches, devices=None):
    """Trains on `batches` over the given devices; returns (losses, final state)."""
    metrics, state = train_metrics(config, batches, devices)
    return np.array([float(m["loss"]) for m in metrics]), state


@functools.cache
def _single_device_run(family, optimizer, steps):
    config = make_tiny_config(family, **EIGHT_HEADS.get(family, {}))
    config.mesh.ici.update(data=1, fsdp=1, expert=1, sequence=1, tensor=1)
    config.optimizer.name = optimizer
    metrics, state = train_metrics(config, [random_batch(config, seed) for seed in range(steps)], jax.devices()[:1])
    return metrics, jax.device_get(state.params)


def single_device_run(family, optimizer="adamw", steps=5):
    """The one-device run every mesh of a family is compared with: (every step's metrics, final
    params as host arrays). Trained once per test process, since each mesh's test would train
    the same one again; the caller gets copies it may change."""
    return jax.tree.map(np.array, _single_device_run(family, optimizer, steps))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("family", FAMILIES + tuple(MOE))
def test_overfits_one_batch(family, optimizer):
    config = make_tiny_config(family)
    config.optimizer.name = optimizer
    # A 32-unit LSTM memorises random tokens through its state alone, not by attending back:
    # at the transformers' 1e-2 it needs twice the steps (0.29 after 160), at 3e-2 it gets there in 80.
    config.optimizer.update(schedule="constant", warmup_steps=0, weight_decay=0.0,
                            learning_rate=3e-2 if family == "lstm" else 1e-2)
    batch = random_batch(config)
    losses, _ = run_steps(config, [batch] * 80, jax.devices()[:1])
    assert losses[0] > 0.9 * np.log(config.model.vocab_size)
    assert losses[-1] < 0.1 * losses[0], losses[::10]


# 8 query and 8 key/value heads, so that tensor=8 splits every head axis.
EIGHT_HEADS = {"llama": dict(num_heads=8, num_kv_heads=8, head_dim=4), "gpt2": dict(num_heads=8, head_dim=4),
               "bert": dict(num_heads=8, head_dim=4), "t5": dict(num_heads=8, head_dim=4)}
# A kernel [layers, embed, mlp] of every family.
FIRST_MLP_KERNEL = {"llama": lambda p: p["layers"]["mlp"]["gate"], "gpt2": lambda p: p["layers"]["mlp"]["fc"],
                    "bert": lambda p: p["layers"]["mlp"]["fc"], "t5": lambda p: p["decoder"]["layers"]["mlp"]["wi_0"]}
KEY_BIAS = {"gpt2": lambda attention: attention["qkv"]["bias"][:, 1],  # Views into the params.
            "bert": lambda attention: attention["key"]["bias"]}


MESHES = [dict(data=8), dict(fsdp=8), dict(tensor=8), dict(data=2, fsdp=2, tensor=2), dict(fsdp=4, tensor=2),
          dict(data=2, sequence=4), dict(fsdp=2, sequence=2, tensor=2)]
# Llama takes every mesh; the other families take one of each axis kind (tensor, sequence with
# data, and all model axes at once), which covers their own rules rows in a third of the time.
COVERING = [dict(tensor=8), dict(data=2, sequence=4), dict(fsdp=2, sequence=2, tensor=2)]


def mesh_id(mesh: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in mesh.items())


# Muon orthogonalises whole matrices, which fsdp and tensor split: any per-shard shortcut would differ.
@pytest.mark.parametrize(("family", "mesh", "optimizer"), [
    *(pytest.param(family, mesh, "adamw", id=f"{family}-{mesh_id(mesh)}")
      for family in TRANSFORMERS for mesh in (MESHES if family == "llama" else COVERING)),
    *(pytest.param("llama", mesh, "muon", id=f"llama-{mesh_id(mesh)}-muon")
      for mesh in (dict(fsdp=8), dict(data=2, fsdp=2, tensor=2)))])
def test_sharded_step_matches_single_device(mesh, family, optimizer):
    sharded = make_tiny_config(family, **EIGHT_HEADS[family])
    sharded.mesh.ici.update(data=1, fsdp=1, sequence=1, tensor=1)
    sharded.mesh.ici.update(**mesh)
    sharded.optimizer.name = optimizer
    metrics_1, params_1 = single_device_run(family, optimizer, steps=5)
    losses_8, state_8 = run_steps(sharded, [random_batch(sharded, seed) for seed in range(5)], jax.devices())
    np.testing.assert_allclose(losses_8, [m["loss"] for m in metrics_1], rtol=1e-5)
    params_8 = jax.tree.map(np.array, jax.device_get(state_8.params))
    if family in KEY_BIAS:
        # The key bias adds the same q.b_k to every score of a row, which softmax ignores: its
        # gradient is 0 up to rounding, and Adam turns that rounding (which depends on the
        # mesh's reduction order) into steps of either sign. It must stay rounding-sized.
        for params in (params_8, params_1):
            key_bias = KEY_BIAS[family](params["layers"]["attention"])
            assert np.abs(key_bias).max() < 1e-4
            key_bias[...] = 0.0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params_8, params_1)
    # The layout follows the rules table: [layers, embed -> fsdp x expert, mlp -> tensor].
    gate = FIRST_MLP_KERNEL[family](state_8.params)["kernel"]
    assert gate.sharding.spec == jax.sharding.PartitionSpec(None, ("fsdp", "expert"), "tensor")  # expert: size 1.
    layers, d_model, mlp_dim = gate.shape
    assert gate.addressable_shards[0].data.shape == (
        layers, d_model // mesh.get("fsdp", 1), mlp_dim // mesh.get("tensor", 1))
    # Every optimizer state of a parameter's shape (AdamW's moments, Muon's momentum) is laid out like it.
    assert {x.sharding.spec for x in jax.tree.leaves(state_8.opt_state) if x.shape == gate.shape} == {gate.sharding.spec}


# Expert parallelism: experts split over the expert axis (rows over data, fsdp and expert), each
# device's tokens sent to their experts' devices by all-to-all and back.
# Without an expert axis the dispatch is plain sharded array algebra (XLA partitions it).
MOE_MESHES = [("moe", dict(expert=4, fsdp=2)), ("moe", dict(data=2, expert=2, tensor=2)), ("moe", dict(fsdp=4, tensor=2)),
              ("moe-capacity", dict(expert=4, data=2)), ("moe-capacity", dict(expert=2, fsdp=2, tensor=2))]


@pytest.mark.parametrize(("family", "mesh"), [pytest.param(f, m, id=f"{f}-{mesh_id(m)}") for f, m in MOE_MESHES])
def test_moe_step_matches_single_device(family, mesh):
    config = make_tiny_config(family)
    config.mesh.ici.update(data=1, fsdp=1, expert=1, sequence=1, tensor=1)
    config.mesh.ici.update(**mesh)
    metrics_1, params_1 = single_device_run(family, steps=4)
    metrics_8, state_8 = train_metrics(config, [random_batch(config, seed) for seed in range(4)], jax.devices())
    routing = [k for k in metrics_1[0] if k.startswith("moe_")]
    assert "moe_aux_loss" in routing and any(k.startswith("moe_expert_fraction/") for k in routing)
    for key in ["loss", *routing]:
        np.testing.assert_allclose([m[key] for m in metrics_8], [m[key] for m in metrics_1], rtol=1e-5, atol=1e-7)
    if family == "moe-capacity":  # Capacity 1.0 of skewed random routing drops some pairs, the same ones.
        assert max(float(m["moe_dropped/layer_1"]) for m in metrics_1) > 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.device_get(state_8.params), params_1)
    layers = state_8.params["layers"]
    gate = (layers["mlp"] if family == "moe" else layers["moe"]["mlp"])["gate"]
    assert gate.sharding.spec == jax.sharding.PartitionSpec(None, "expert", "fsdp", "tensor")
    layer, e, d, f = gate.shape
    assert gate.addressable_shards[0].data.shape == (layer, e // mesh.get("expert", 1), d // mesh.get("fsdp", 1),
                                                      f // mesh.get("tensor", 1))
    # Outside the experts, the expert axis splits weights like fsdp does.
    query = (layers["attention"] if family == "moe" else layers["moe"]["attention"])["query"]["kernel"]
    assert query.sharding.spec[1] == ("fsdp", "expert")
    assert query.addressable_shards[0].data.shape[1] == d // (mesh.get("fsdp", 1) * mesh.get("expert", 1))


def test_expert_parallel_dispatch_is_an_all_to_all():
    config = make_tiny_config("moe")
    config.mesh.ici.update(data=2, expert=4)
    train_fn = bootstrap(config).lower_train_step().compile()
    assert "all-to-all" in train_fn.as_text()


def test_gradient_accumulation_equals_full_batch():
    whole, accumulated = make_tiny_config(), make_tiny_config()
    accumulated.train.microbatches = 4
    batches = [random_batch(whole, seed) for seed in range(3)]
    for batch in batches:  # Unequal token counts per microbatch: normalisation must be global.
        batch["weights"][:3, 5:] = 0.0
    losses_whole, state_whole = run_steps(whole, batches)
    losses_acc, state_acc = run_steps(accumulated, batches)
    np.testing.assert_allclose(losses_acc, losses_whole, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.device_get(state_acc.params), jax.device_get(state_whole.params))


def test_non_finite_update_is_skipped_and_counted(tiny_config):
    run = bootstrap(tiny_config)
    state = run.create_state()
    train_fn = run.lower_train_step().compile()
    rows = run.batch_shardings()
    state, _ = train_fn(state, pipeline.to_device(random_batch(tiny_config, 0), rows))
    before = jax.device_get(state)
    poisoned = random_batch(tiny_config, 1)
    poisoned["weights"][0, 0] = np.nan
    state, metrics = train_fn(state, pipeline.to_device(poisoned, rows))
    after = jax.device_get(state)
    assert int(metrics["skipped"]) == 1 and int(after.skipped_steps) == 1
    assert int(after.step) == 2
    jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)
    state, metrics = train_fn(state, pipeline.to_device(random_batch(tiny_config, 2), rows))
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
    changed = jax.device_get(state.params)
    assert not np.array_equal(changed["embed"]["embedding"], before.params["embed"]["embedding"])


def test_loss_masks_weights_and_adds_z_loss():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5)) * 3
    targets = jnp.array([[1, 2, 3], [4, 0, 1]])
    weights = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    nll, z, count = cross_entropy_sums(logits, targets, weights, z_loss=1e-2)
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    expected = -sum(log_probs[b, t, targets[b, t]] for b, t in [(0, 0), (0, 2), (1, 0), (1, 1)])
    log_z = np.log(np.exp(np.asarray(logits)).sum(-1))
    assert float(count) == 4
    assert float(nll) == pytest.approx(expected, rel=1e-5)
    assert float(z) == pytest.approx(1e-2 * (log_z ** 2 * np.asarray(weights)).sum(), rel=1e-5)


def test_chunked_loss_equals_whole_loss_and_gradient():
    config = make_tiny_config(tie_embeddings=False)
    params = init_params(config)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config).items()}
    batch["weights"] = batch["weights"].at[:3, 5:].set(0.0)

    def sums(params, chunk_len):
        h_BTD, logits_fn = model.apply_hidden(params, batch["inputs"], batch["positions"],
                                              batch["segment_ids"], config=config)
        if not chunk_len:
            return cross_entropy_sums(logits_fn(h_BTD), batch["targets"], batch["weights"], 1e-3)
        return chunked_cross_entropy_sums(h_BTD, logits_fn, batch["targets"], batch["weights"],
                                          1e-3, chunk_len)

    whole = sums(params, 0)
    np.testing.assert_allclose(whole[0], cross_entropy_sums(
        model.apply(params, batch["inputs"], batch["positions"], batch["segment_ids"], config=config),
        batch["targets"], batch["weights"])[0], rtol=1e-6)
    grad_whole = jax.grad(lambda p: sum(sums(p, 0)[:2]))(params)
    for chunk_len in (4, 8):
        np.testing.assert_allclose(sums(params, chunk_len), whole, rtol=1e-5)
        grad_chunked = jax.grad(lambda p, c=chunk_len: sum(sums(p, c)[:2]))(params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                     grad_chunked, grad_whole)


def test_train_step_with_chunked_loss_matches_unchunked():
    whole, chunked = make_tiny_config(), make_tiny_config()
    chunked.train.loss_chunk_len = 4
    batches = [random_batch(whole, seed) for seed in range(3)]
    losses_whole, state_whole = run_steps(whole, batches)
    losses_chunked, state_chunked = run_steps(chunked, batches)
    np.testing.assert_allclose(losses_chunked, losses_whole, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.device_get(state_chunked.params), jax.device_get(state_whole.params))


def _decayed(preset: str, optimizer: str) -> dict[str, bool]:
    """{parameter: moved by one update of zero gradients}: only weight decay moves a parameter."""
    from llmjax.presets import compose  # noqa: PLC0415
    from llmjax.run import abstract_params  # noqa: PLC0415

    config = compose(preset, overrides={"optimizer.name": optimizer, "optimizer.warmup_steps": 0,
                                        "optimizer.grad_clip": 0.0, "train.steps": 100})
    shapes, axes = abstract_params(config)
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
    tx = build_optimizer(config, axes)
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    return {jax.tree_util.keystr(path): bool(jnp.any(u != 0)) for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]}


@pytest.mark.parametrize("preset", ["tiny", "tiny_moe", "gpt2-tiny", "bert-tiny", "t5-tiny", "lstm-tiny"])
def test_weight_decay_takes_every_matrix_and_skips_norms_biases_and_embeddings(preset):
    """Every weight matrix (an MoE layer's experts and the LSTM's recurrent weights, bare arrays,
    included) and nothing else, under AdamW and Muon alike, so that they regularise the same."""
    adamw = _decayed(preset, "adamw")
    kept = {name for name in adamw if re.search(r"\['(embedding|scale|bias|\w+_bias)'\]$", name)}
    assert {name for name, moved in adamw.items() if not moved} == kept
    assert _decayed(preset, "muon") == adamw


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_learning_rate_schedules(schedule):
    config = make_tiny_config()
    config.train.steps = 100
    config.optimizer.update(schedule=schedule, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1)
    lr = learning_rate_schedule(config)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    final = {"cosine": 0.1, "linear": 0.1, "constant": 1.0}[schedule]
    assert float(lr(100)) == pytest.approx(final, abs=1e-6)
    if schedule == "cosine":
        assert float(lr(55)) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)
