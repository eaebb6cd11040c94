"""Document-masked, grouped-query attention over already projected queries, keys and values,
causal (decoders) or bidirectional (encoders, cross-attention): the kernel choice per platform,
and the KV-cache path used when decoding. Families build their own projections (biases, RoPE
or not) and call `causal_attention` or `bidirectional_attention` (T5, with its position bias,
`attention_kernel`); every kernel (XLA, the CPU blockwise one, cuDNN, splash) serves both masks,
and all but splash take a bias on the scores."""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.errors import config_error
from llmjax.model.layers.blockwise import blockwise_attention
from llmjax.model.layers.kv_cache import attend_to_cache, cache_attention
from llmjax.model.layers.splash import splash_attention, splash_available

HEADS_ACT = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
KV_ACT = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")
_RECORDERS: list[set] = []


@contextlib.contextmanager
def recorded_kernels():
    """The attention kernels traced inside the block, as "<mask>: <kernel>" strings: what the
    platform actually selected, for the run to print (a fallback would otherwise go unseen)."""
    kernels: set[str] = set()
    _RECORDERS.append(kernels)
    try:
        yield kernels
    finally:
        _RECORDERS.remove(kernels)


def _record(mask: str, impl: str) -> None:
    for kernels in _RECORDERS:
        kernels.add(f"{mask}: {impl}")


def select_attention_impl(requested: str, platform: str, dtype, head_dim: int, length: int,
                          splash: bool | None = None, bias_or_prefix: bool = False) -> str:
    """`auto` takes the platform's fused kernel where it applies: cuDNN flash attention on GPU
    for 16-bit inputs with head_dim a multiple of 8 up to 128 (what cuDNN supports); TPU splash
    attention where this JAX ships it (`splash`, by default looked up) and the length fills
    its 128-wide blocks; on CPU causal query blocks with a hand-written backward pass
    (`llmjax.model.layers.blockwise`); XLA's reference path everywhere else. An explicit
    choice is honoured as given where the platform has that kernel, and refused otherwise
    (when the model is first traced for its shapes, before anything compiles). Splash's masks
    are fixed when the kernel is built and it takes no bias, so with a per-row prefix or a
    score bias (`bias_or_prefix`) TPU runs XLA's attention instead."""
    impl = _requested_or_fastest(requested, platform, dtype, head_dim, length, splash)
    return "xla" if impl == "splash" and bias_or_prefix else impl


def _requested_or_fastest(requested: str, platform: str, dtype, head_dim: int, length: int,
                          splash: bool | None) -> str:
    if requested in ("cudnn", "splash"):
        kernel_platform = "gpu" if requested == "cudnn" else "tpu"
        if platform != kernel_platform or (requested == "splash" and not (
                splash_available() if splash is None else splash)):
            raise config_error("model.attention_impl", requested,
                               f"that kernel runs on {kernel_platform.upper()} only (this is {platform}); "
                               f"use auto, which picks the platform's fastest, or xla.")
    if requested != "auto":
        return requested
    if (platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
            and head_dim % 8 == 0 and head_dim <= 128):
        return "cudnn"
    if platform == "tpu" and length % 128 == 0 and (splash_available() if splash is None else splash):
        return "splash"
    if platform == "cpu":
        return "blockwise"
    return "xla"


def causal_attention(module: nn.Module, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, impl: str, prefix_BT=None):
    """Attention output [B, T, N, H]. `module` is the calling Flax module: when its "cache"
    collection is mutable (decoding), the keys and values are appended to its cache and the
    queries attend to everything cached so far instead. `prefix_BT` (prefix LM: in training,
    and a prompt's tokens in decoding) marks the tokens every query of their document sees,
    ahead of it or not."""
    q_BTNH = nn.with_logical_constraint(q_BTNH, HEADS_ACT)
    k_BTKH = nn.with_logical_constraint(k_BTKH, KV_ACT)
    v_BTKH = nn.with_logical_constraint(v_BTKH, KV_ACT)
    if module.is_mutable_collection("cache") and not module.is_initializing():  # Decoding.
        k_BKSH, v_BKSH, mask_B1TS = attend_to_cache(module, k_BTKH, v_BTKH, segment_ids_BT, prefix_BT)
        # One new query over the cache is memory-bound: plain XLA is as fast as any kernel.
        out_BTNH = cache_attention(q_BTNH, k_BKSH, v_BKSH, mask_B1TS)
    else:
        out_BTNH = attention_kernel(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, segment_ids_BT, impl, causal=True,
                           prefix_BT=prefix_BT)
    return nn.with_logical_constraint(out_BTNH, HEADS_ACT)


def bidirectional_attention(q_BTNH, k_BSKH, v_BSKH, segment_ids_BT, impl: str, kv_segment_ids_BS=None):
    """Attention output [B, T, N, H] where every query sees every key of its own segment: an
    encoder's self-attention, or (with keys of another sequence and their own segment ids
    `kv_segment_ids_BS`) cross-attention, where packed examples see only their own inputs."""
    q_BTNH = nn.with_logical_constraint(q_BTNH, HEADS_ACT)
    k_BSKH = nn.with_logical_constraint(k_BSKH, KV_ACT)
    v_BSKH = nn.with_logical_constraint(v_BSKH, KV_ACT)
    if kv_segment_ids_BS is None:
        kv_segment_ids_BS = segment_ids_BT
    out_BTNH = attention_kernel(q_BTNH, k_BSKH, v_BSKH, segment_ids_BT, kv_segment_ids_BS, impl, causal=False)
    return nn.with_logical_constraint(out_BTNH, HEADS_ACT)


def attention_kernel(q_BTNH, k_BSKH, v_BSKH, q_segments_BT, kv_segments_BS, impl: str, causal: bool, prefix_BT=None,
                     bias_1NTS=None, scale: float | None = None):
    """The platform's attention kernel (see `select_attention_impl`) with the segment mask,
    and the causal one (opened over the prefix, with `prefix_BT`) when `causal`. `bias_1NTS`
    is added to the scores (T5's relative positions), which are first multiplied by `scale`
    (default head_dim^-0.5; T5 folds it into its queries and passes 1)."""
    impl = select_attention_impl(impl, jax.default_backend(), q_BTNH.dtype, q_BTNH.shape[-1],
                                 q_BTNH.shape[1], bias_or_prefix=prefix_BT is not None or bias_1NTS is not None)
    _record("position-biased" if bias_1NTS is not None else "prefix" if prefix_BT is not None
            else "causal" if causal else "bidirectional", impl)
    if bias_1NTS is not None:
        bias_1NTS = bias_1NTS.astype(q_BTNH.dtype)
    if impl == "splash":
        return splash_attention(q_BTNH, k_BSKH, v_BSKH, q_segments_BT, causal=causal,
                                kv_segment_ids_BS=kv_segments_BS)
    if impl == "blockwise":
        # 128-query blocks, at most 8 of them: the backward pass's ops grow as blocks^2.
        block = max(128, -(-q_BTNH.shape[1] // 8))
        return blockwise_attention(q_BTNH, k_BSKH, v_BSKH, q_segments_BT, block, causal, kv_segments_BS,
                                   prefix_BT, bias_1NTS, scale)
    mask_B1TS = None
    if q_segments_BT is not None:
        mask_B1TS = q_segments_BT[:, None, :, None] == kv_segments_BS[:, None, None, :]
    if prefix_BT is not None:
        t = q_BTNH.shape[1]
        seen_B1TS = (jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]) | prefix_BT[:, None, None, :].astype(bool)
        mask_B1TS = seen_B1TS if mask_B1TS is None else mask_B1TS & seen_B1TS
        causal = False  # The mask holds the causal part.
    return jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, bias=bias_1NTS, mask=mask_B1TS, scale=scale,
                                        is_causal=causal, implementation=impl)
