"""Models as pure functions, for any registered family (`llmjax.model.registry`).

`init(rng, config)` returns parameters whose leaves are `nn.LogicallyPartitioned` boxes naming
their logical axes; `apply(params, tokens, ...)` accepts boxed or plain arrays and returns fp32
logits. The caller enters the logical-axis rules (`llmjax.parallel.rules`) when it wants the
activations constrained to a mesh; the model itself knows nothing of meshes.
"""

from llmjax.model import registry


def init(rng, config):
    """The run's parameters: the family's, plus a fine-tuning run's task head and adapters.

    Called on a concrete key (a notebook, a script) it compiles itself: run op by op, the
    initialiser dispatches hundreds of small random-number ops (the tiny T5: 33 s eagerly, 4 s
    compiled, on a busy 2-core CPU). Under a trace (`jax.jit`, `jax.eval_shape`) it is traced
    into the caller's program as it is."""
    import jax  # noqa: PLC0415 - this package is imported where configs are checked, before JAX.

    from llmjax import cpu_runtime  # noqa: PLC0415

    if isinstance(rng, jax.core.Tracer):
        return _init(rng, config)
    return jax.jit(lambda key: _init(key, config), compiler_options=cpu_runtime.for_one_call())(rng)


def _init(rng, config):
    from llmjax.finetune.params import extend  # noqa: PLC0415 - it needs the objectives, which need the registry.

    return extend(rng, config, registry.of(config).math().init(rng, config))


def forward(params, batch, *, config, with_head: bool = True):
    """The family's `apply` on a run's parameters (`llmjax.finetune.params.backbone`): what
    every objective calls."""
    from llmjax.finetune.params import backbone  # noqa: PLC0415

    return registry.of(config).math().apply(backbone(params, config), batch, config=config, with_head=with_head)


def apply(params, tokens_BT, positions_BT=None, segment_ids_BT=None, *, config):
    """Logits [batch, length, vocab] in fp32 of a decoder family. Positions default to 0..T-1;
    segment ids, when given, stop attention between documents packed into one row."""
    batch = {"inputs": tokens_BT, "positions": positions_BT, "segment_ids": segment_ids_BT}
    return forward(params, batch, config=config)


def apply_hidden(params, tokens_BT, positions_BT=None, segment_ids_BT=None, *, config):
    """(final hidden states [batch, length, d_model], logits_fn): `logits_fn(h_BCD)` gives the
    fp32 logits of any slice of the hidden states, so a loss need never hold all of them."""
    batch = {"inputs": tokens_BT, "positions": positions_BT, "segment_ids": segment_ids_BT}
    return forward(params, batch, config=config, with_head=False)


__all__ = ["apply", "apply_hidden", "forward", "init", "registry"]
