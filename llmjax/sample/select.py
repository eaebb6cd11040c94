"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmjax.errors import LlmjaxError


class SampleError(LlmjaxError, ValueError):
    """Generation settings or prompts that cannot work; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def check(self) -> None:
        if self.temperature < 0:
            raise SampleError(f"--temperature {self.temperature}: must be >= 0 (0 is greedy).")
        if self.top_k < 0:
            raise SampleError(f"--top_k {self.top_k}: must be >= 0 (0 keeps every token).")
        if not 0 < self.top_p <= 1:
            raise SampleError(f"--top_p {self.top_p}: must be in (0, 1] (1 keeps every token).")


def filter_logits(logits_BV, top_k: int, top_p: float):
    """-inf outside the k most likely tokens and outside the smallest set of most likely tokens
    whose probability reaches top_p (the most likely token always stays)."""
    if top_k:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if top_p < 1:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        kept = jnp.where(mass_before_BV < top_p, sorted_BV, jnp.inf)
        logits_BV = jnp.where(logits_BV < kept.min(axis=-1, keepdims=True), -jnp.inf, logits_BV)
    return logits_BV


def choose(rng, logits_BV, sampling: Sampling):
    """Next token ids [B]."""
    if sampling.temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = filter_logits(logits_BV / sampling.temperature, sampling.top_k, sampling.top_p)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)
