"""Masked language modelling (Devlin et al. 2019): corrupt some tokens of a packed window and
predict the originals at those positions only, attending in both directions.

Of the window's text tokens (never padding, end-of-document or any other special token), each
is chosen with probability `objective.mask_rate` (15%); a chosen token is replaced by the mask
token with probability `objective.mask_token_rate` (80%), by a uniformly drawn text token with
`objective.random_token_rate` (10%), and left as it is otherwise (10%), so the model cannot
learn that only mask tokens matter. The loss is the cross-entropy of the original tokens at the
chosen positions, normalised by their number.

The corruption of global row g is drawn from a generator seeded by (seed, g), so the batch of a
step is a function of (data, seed, step) and resume is exact on any mesh; a window seen in a
later epoch is corrupted anew (RoBERTa's dynamic masking).
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

from llmjax.data.errors import DataError
from llmjax.data.tokenizer import MASK_NAMES
from llmjax import model
from llmjax.train.objectives.causal_lm import CausalLM
from llmjax.train.objectives.cross_entropy import mean, token_nll

_STREAM = 0x6D6C6D  # Separates this objective's random stream from any other drawn from the seed.


class MaskedLM(CausalLM):
    """Causal LM's batch fields and loss sums, over other rows: targets are the original tokens
    at the chosen positions, the only ones with weight."""
    name = "mlm"

    def token_ids(self, tokenizer, config=None) -> dict:
        """The mask token, the special tokens never chosen, and the text tokens a random
        replacement is drawn from; refuses a tokenizer without a mask token."""
        del config
        mask = tokenizer.token_id(MASK_NAMES)
        if mask is None:
            raise DataError(f"objective mlm needs a mask token, and tokenizer {tokenizer.path} has none "
                            f"(looked for {', '.join(MASK_NAMES)}); prepare the dataset with llmjax-prepare "
                            f"--objective mlm, let llmjax train the tokenizer of a text source "
                            f"(data.tokenizer=''), or give one with a mask token.")
        known = [i for i in (mask, tokenizer.eos_id, tokenizer.pad_id) if i is not None]
        special = np.union1d(tokenizer.special_ids(), known).astype(np.int64)
        return {"mask": mask, "special": special,
                "text": np.setdiff1d(np.arange(tokenizer.vocab_size), special).astype(np.int32)}

    def rows(self, windows, config, seed: int, token_ids: dict):
        """Rows of the objective from a grain.MapDataset of packed windows: row g corrupted by a
        generator seeded by (seed, g)."""
        return windows.map_with_index(functools.partial(corrupt, seed=seed, token_ids=token_ids,
                                                        rates=rates(config)))

    def eval_sums(self, params, batch, *, config):
        """(NLL sum, chosen tokens, correctly predicted chosen tokens): sums, so batches add."""
        logits = model.forward(params, batch, config=config)
        nll_BT, _ = token_nll(logits, batch["targets"])
        weights = batch["weights"]
        correct = (jnp.argmax(logits, axis=-1) == batch["targets"]) * weights
        return jnp.sum(nll_BT * weights), jnp.sum(weights), jnp.sum(correct)

    def target_bytes(self, host_batch, token_bytes) -> float:
        """UTF-8 bytes the chosen tokens stand for (reported; MLM has no bits per byte, since
        its loss is not a code length for the text)."""
        return float((token_bytes[host_batch["targets"]] * host_batch["weights"]).sum())

    def metrics(self, sums, num_bytes: float) -> dict[str, float]:
        """Loss and perplexity over the chosen tokens, and the fraction of them predicted right."""
        del num_bytes
        nll, tokens, correct = (float(x) for x in sums)
        loss = mean(nll, tokens)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": mean(correct, tokens)}

    def describe(self, values: dict[str, float]) -> str:
        return f"loss {values['loss']:.4f} ppl {values['perplexity']:.2f} acc {values['accuracy']:.4f}"


def rates(config) -> tuple[float, float, float]:
    o = config.objective
    return o.mask_rate, o.mask_token_rate, o.random_token_rate


def corrupt(index: int, window: dict, *, seed: int, token_ids: dict, rates: tuple[float, float, float]) -> dict:
    """The MLM row of one packed window (its global row index `index`)."""
    mask_rate, mask_token_rate, random_token_rate = rates
    rng = np.random.default_rng([seed, _STREAM, int(index)])
    tokens = window["inputs"]
    draws = rng.random((2, tokens.size))
    # The last window's padding is the pad (or end-of-document) token: special, never chosen.
    chosen = ~np.isin(tokens, token_ids["special"]) & (draws[0] < mask_rate)
    random_tokens = token_ids["text"][rng.integers(0, token_ids["text"].size, tokens.size)]
    replaced = np.where(draws[1] < mask_token_rate, token_ids["mask"],
                        np.where(draws[1] < mask_token_rate + random_token_rate, random_tokens, tokens))
    return {"inputs": np.where(chosen, replaced, tokens).astype(np.int32),
            "targets": tokens.astype(np.int32),
            "positions": window["positions"], "segment_ids": window["segment_ids"],
            "weights": chosen.astype(np.float32)}


OBJECTIVE = MaskedLM()
