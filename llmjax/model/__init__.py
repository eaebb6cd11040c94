"""Models as pure functions, for any registered family (`llmjax.model.registry`).

`init(rng, config)` returns parameters whose leaves are `nn.LogicallyPartitioned` boxes naming
their logical axes; `apply(params, tokens, ...)` accepts boxed or plain arrays and returns fp32
logits. The caller enters the logical-axis rules (`llmjax.parallel.rules`) when it wants the
activations constrained to a mesh; the model itself knows nothing of meshes.
"""

from llmjax.model import registry


def init(rng, config):
    return registry.of(config).math().init(rng, config)


def apply(params, tokens_BT, positions_BT=None, segment_ids_BT=None, *, config):
    """Logits [batch, length, vocab] in fp32 of a decoder family. Positions default to 0..T-1;
    segment ids, when given, stop attention between documents packed into one row."""
    batch = {"inputs": tokens_BT, "positions": positions_BT, "segment_ids": segment_ids_BT}
    return registry.of(config).math().apply(params, batch, config=config)


def apply_hidden(params, tokens_BT, positions_BT=None, segment_ids_BT=None, *, config):
    """(final hidden states [batch, length, d_model], logits_fn): `logits_fn(h_BCD)` gives the
    fp32 logits of any slice of the hidden states, so a loss need never hold all of them."""
    batch = {"inputs": tokens_BT, "positions": positions_BT, "segment_ids": segment_ids_BT}
    return registry.of(config).math().apply(params, batch, config=config, with_head=False)


__all__ = ["apply", "apply_hidden", "init", "registry"]
