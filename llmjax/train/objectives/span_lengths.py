"""The lengths of span corruption (Raffel et al. 2020, section 3.1.4), as plain arithmetic:
read by the objective and by T5's FLOPs formula before JAX starts.

A text of n tokens has round(n * noise_density) noise tokens in round(noise / mean_span_length)
spans. The inputs keep the other tokens with one sentinel per span, and end-of-document; the
targets hold each span after its sentinel, and end-of-document. So an encoder of L tokens
takes the longest text whose inputs fit in L (T5's `random_spans_helper`), and the decoder
needs that text's targets."""

from __future__ import annotations

import math

from llmjax.errors import config_error

SENTINELS = 100  # Sentinel tokens trained into llmjax's tokenizer, as T5's 100 extra ids.


def noise_counts(tokens: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a text of `tokens` tokens: at least one of each and at
    least one token kept, for any text of two tokens or more; none for a shorter one."""
    if tokens < 2:
        return 0, 0
    noise = min(max(round(tokens * noise_density), 1), tokens - 1)
    spans = min(max(round(noise / mean_span_length), 1), noise, tokens - noise)
    return noise, spans


def corrupted_lengths(tokens: int, noise_density: float, mean_span_length: float,
                      ends_document: bool = True) -> tuple[int, int]:
    """(inputs, targets) lengths of a document piece of `tokens` tokens. A piece that ends its
    document keeps end-of-document out of the noise, in the inputs, and repeats it at the end of
    the targets; a piece cut by the window's end has none."""
    text = tokens - 1 if ends_document else tokens
    noise, spans = noise_counts(text, noise_density, mean_span_length)
    return tokens - noise + spans, noise + spans + (1 if ends_document else 0)


def span_lengths(inputs_length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> tuple[int, int]:
    """(text tokens, targets length) for an encoder of `inputs_length` tokens: the longest
    window whose inputs fit whether or not it ends a document, and the longer of its two
    targets. 512 -> (569, 114): T5's C4 pretraining (568 text tokens and end-of-document)."""
    def fits(tokens):
        return all(corrupted_lengths(tokens, noise_density, mean_span_length, ends)[0] <= inputs_length
                   for ends in (True, False))
    tokens = inputs_length
    while fits(tokens + 1):
        tokens += 1
    return tokens, max(corrupted_lengths(tokens, noise_density, mean_span_length, ends)[1] for ends in (True, False))


def check(config, mesh_shape: dict[str, int]) -> None:
    """Refuses span-corruption lengths that cannot work, before anything runs."""
    o, seq_len = config.objective, config.data.seq_len
    if not 0 < o.noise_density < 1:
        raise config_error("objective.noise_density", o.noise_density, "must be in (0, 1).")
    if not 1 <= o.mean_span_length < math.inf:
        raise config_error("objective.mean_span_length", o.mean_span_length, "must be a finite number >= 1.")
    text, needed = span_lengths(seq_len, o.noise_density, o.mean_span_length)
    if noise_counts(text - 1, o.noise_density, o.mean_span_length)[0] < 1:
        raise config_error("data.seq_len", seq_len, "leaves a window that ends a document no token to corrupt "
                                                    "(nothing to predict); give span corruption at least 3 tokens.")
    spans = noise_counts(text, o.noise_density, o.mean_span_length)[1]
    if spans > SENTINELS:
        raise config_error("data.seq_len", seq_len, f"needs {spans} sentinels per window, more than the "
                                                    f"{SENTINELS} a tokenizer has; lower it or raise "
                                                    f"objective.mean_span_length.")
    targets = o.targets_length or needed
    if not isinstance(o.targets_length, int) or o.targets_length < 0 or 0 < o.targets_length < needed:
        raise config_error("objective.targets_length", o.targets_length,
                           f"must be 0 (derived: {needed}) or at least {needed}, the targets of an "
                           f"encoder of data.seq_len={seq_len} tokens.")
    if targets % mesh_shape["sequence"]:
        fit = -(-targets // mesh_shape["sequence"]) * mesh_shape["sequence"]
        raise config_error("objective.targets_length", o.targets_length,
                           f"gives a decoder of {targets} tokens, which the sequence mesh axis of "
                           f"{mesh_shape['sequence']} does not divide; set objective.targets_length={fit}.")
    chunk = config.train.loss_chunk_len
    if chunk and targets % chunk:
        raise config_error("train.loss_chunk_len", chunk,
                           f"must divide the decoder's {targets} tokens (objective.targets_length) "
                           f"for span corruption.")
