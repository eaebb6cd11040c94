"""Span corruption (Raffel et al. 2020, section 3.1.4): the encoder reads a text with random
spans replaced by sentinel tokens, and the decoder writes out the spans, each after its
sentinel. T5's defaults: 15% of tokens are noise, in spans of mean length 3.

Each document piece of a packed window is corrupted on its own, as T5 corrupts examples before
packing: its tokens are split into alternating kept and noise spans (kept first, noise last,
span lengths a uniform random partition, T5's `random_spans_noise_mask`); the inputs are the
kept tokens with the i-th noise span replaced by sentinel i, the targets are sentinel i then
noise span i for every i; a piece that ends its document has end-of-document at the end of
both. Pieces are packed into the encoder's `data.seq_len` tokens and the decoder's
`span_lengths` targets, each with its own segment ids and positions on both sides, so neither
self- nor cross-attention mixes examples. The window holds the longest text whose inputs fit
(`span_lengths`); a piece that would overflow either side (each piece rounds its noise and
adds its own sentinels and end-of-document) is cut to its longest prefix that fits, and the
rest of the window is left out.

The corruption of global row g is drawn from a generator seeded by (seed, g): the batch of a
step is a function of (data, seed, step), and resume is exact on any mesh. The loss is the
decoder's cross-entropy on the targets; evaluation reports it with perplexity and target-token
accuracy (no bits per byte: the targets are not a coding of the text).
"""

from __future__ import annotations

import functools

import numpy as np

from llmjax.data.errors import DataError
from llmjax.train.objectives.fields import Field
from llmjax.train.objectives.mlm import MaskedLM
from llmjax.train.objectives.span_lengths import corrupted_lengths, noise_counts, span_lengths

_STREAM = 0x737063  # Separates this objective's random stream from any other drawn from the seed.
ENCODER_AXES = ("activation_batch", "activation_length")
DECODER_AXES = ("activation_batch", "activation_decoder_length")


def sentinel_names(i: int) -> tuple[str, ...]:
    """The names sentinel i goes by: llmjax's, and T5's tokenizers'."""
    return f"<|sentinel_{i}|>", f"<extra_id_{i}>"


def lengths(config) -> tuple[int, int, int]:
    """(text tokens per window, encoder length, decoder length)."""
    o = config.objective
    text, targets = span_lengths(config.data.seq_len, o.noise_density, o.mean_span_length)
    return text, config.data.seq_len, o.targets_length or targets


def encoder_decoder_fields(batch_size: int, encoder: int, decoder: int) -> dict[str, Field]:
    """An encoder-decoder's batch: inputs on the encoder's side, inputs and targets on the decoder's."""
    enc, dec = (batch_size, encoder), (batch_size, decoder)
    return {"inputs": Field(enc, "int32", ENCODER_AXES, "tokens"),
            "positions": Field(enc, "int32", ENCODER_AXES, "positions"),
            "segment_ids": Field(enc, "int32", ENCODER_AXES, "segments"),
            "decoder_inputs": Field(dec, "int32", DECODER_AXES, "tokens"),
            "decoder_positions": Field(dec, "int32", DECODER_AXES, "positions"),
            "decoder_segment_ids": Field(dec, "int32", DECODER_AXES, "segments"),
            "targets": Field(dec, "int32", DECODER_AXES, "tokens"),
            "weights": Field(dec, "float32", DECODER_AXES, "weights")}


class SpanCorruption(MaskedLM):
    """MLM's evaluation (loss, perplexity, accuracy over the scored targets), over rows with
    an encoder and a decoder side."""
    name = "span"
    position_sums = None  # A target's context is the whole encoder input: no context length to plot it against.

    def fields(self, config, batch_size: int) -> dict[str, Field]:
        _, encoder, decoder = lengths(config)
        return encoder_decoder_fields(batch_size, encoder, decoder)

    def window_len(self, config) -> int:
        return lengths(config)[0]

    def token_ids(self, tokenizer, config=None) -> dict:
        """The sentinels a window can need (one per noise span of its longest piece), the
        decoder's start token (padding, as T5, or end-of-document), end-of-document; refuses a
        tokenizer without enough sentinels."""
        needed = noise_counts(lengths(config)[0], config.objective.noise_density,
                              config.objective.mean_span_length)[1]
        sentinels = [tokenizer.token_id(sentinel_names(i)) for i in range(needed)]
        if None in sentinels:
            raise DataError(f"objective span needs {needed} sentinel tokens for windows of "
                            f"{lengths(config)[0]} tokens, and tokenizer {tokenizer.path} lacks "
                            f"{' / '.join(sentinel_names(sentinels.index(None)))}; prepare the dataset "
                            f"with llmjax-prepare --objective span, let llmjax train the tokenizer of a text "
                            f"source (data.tokenizer=''), or give one with T5's <extra_id_N> tokens.")
        start = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        return {"sentinels": np.asarray(sentinels, np.int32), "start": start, "eos": tokenizer.eos_id}

    def rows(self, windows, config, seed: int, token_ids: dict):
        o = config.objective
        _, encoder, decoder = lengths(config)
        return windows.map_with_index(functools.partial(
            corrupt_spans, seed=seed, token_ids=token_ids,
            shape=(o.noise_density, o.mean_span_length, encoder, decoder)))

    def target_bytes(self, host_batch, token_bytes) -> float:
        del host_batch, token_bytes
        return 0.0


def random_partition(items: int, parts: int, rng) -> np.ndarray:
    """`parts` positive lengths summing to `items`, uniformly over all such partitions."""
    cuts = np.sort(rng.choice(items - 1, parts - 1, replace=False) + 1) if parts > 1 else np.zeros(0, int)
    return np.diff(np.concatenate([[0], cuts, [items]]))


def corrupt_text(text, noise_density: float, mean_span_length: float, sentinels, rng):
    """(inputs, targets) of one document piece's text: kept spans with a sentinel in place of
    each noise span, and each noise span after its sentinel. None for a text too short."""
    noise, spans = noise_counts(text.size, noise_density, mean_span_length)
    if spans == 0:
        return None
    kept_lengths = random_partition(text.size - noise, spans, rng)
    noise_lengths = random_partition(noise, spans, rng)
    starts = np.cumsum(np.stack([kept_lengths, noise_lengths], 1).reshape(-1)) - np.stack(
        [kept_lengths, noise_lengths], 1).reshape(-1)
    inputs, targets = [], []
    for i in range(spans):
        kept_at, noise_at = starts[2 * i], starts[2 * i + 1]
        inputs += [text[kept_at:kept_at + kept_lengths[i]], sentinels[i:i + 1]]
        targets += [sentinels[i:i + 1], text[noise_at:noise_at + noise_lengths[i]]]
    return np.concatenate(inputs), np.concatenate(targets)


def fitted(piece, ends_document: bool, room: tuple[int, int], noise_density: float, mean_span_length: float):
    """(piece, ends_document) if its corrupted inputs and targets fit in `room`, else its longest
    prefix that does (a cut piece no longer ends its document; empty if none fits)."""
    def fits(tokens, ends):
        return all(n <= r for n, r in zip(corrupted_lengths(tokens, noise_density, mean_span_length, ends), room))
    if fits(piece.size, ends_document):
        return piece, ends_document
    tokens = piece.size - 1
    while tokens > 0 and not fits(tokens, False):
        tokens -= 1
    return piece[:tokens], False


def corrupt_spans(index: int, window: dict, *, seed: int, token_ids: dict, shape: tuple) -> dict:
    """The span-corruption row of one packed window (its global row index `index`)."""
    noise_density, mean_span_length, encoder, decoder = shape
    rng = np.random.default_rng([seed, _STREAM, int(index)])
    length, eos = int(window["length"]), token_ids["eos"]
    tokens, segments = window["inputs"][:length], window["segment_ids"][:length]
    starts = np.flatnonzero(np.diff(segments, prepend=-1))
    enc, dec = [], []
    for start, end in zip(starts, np.append(starts[1:], length)):
        room = (encoder - sum(map(len, enc)), decoder - sum(map(len, dec)))
        piece, ends_document = fitted(tokens[start:end], tokens[end - 1] == eos, room, noise_density,
                                      mean_span_length)
        corrupted = corrupt_text(piece[:-1] if ends_document else piece, noise_density, mean_span_length,
                                 token_ids["sentinels"], rng)
        if corrupted is None:
            continue
        enc_, dec_ = (np.append(x, eos) if ends_document else x for x in corrupted)
        enc.append(enc_)
        dec.append(dec_)
        if piece.size < end - start:
            break  # Cut to fit: the window is full.
    inputs, positions, segments = packed(enc, encoder, eos)
    targets, decoder_positions, decoder_segments = packed(dec, decoder, eos)
    # The decoder reads each example's targets shifted right, behind the start token.
    decoder_inputs, _, _ = packed([np.append(token_ids["start"], t[:-1]) for t in dec], decoder, eos)
    return {"inputs": inputs, "positions": positions, "segment_ids": segments,
            "decoder_inputs": decoder_inputs, "decoder_positions": decoder_positions,
            "decoder_segment_ids": decoder_segments, "targets": targets,
            "weights": (np.arange(decoder) < sum(map(len, dec))).astype(np.float32)}


def packed(parts: list[np.ndarray], length: int, pad: int):
    """(tokens, positions, segment ids) of `parts` one after another in `length` slots and
    padded; the padding is one segment more, on both sides alike, so its queries see keys."""
    sizes = [len(p) for p in parts] + [length - sum(map(len, parts))]
    tokens = np.concatenate([*parts, np.full(sizes[-1], pad)]).astype(np.int32)
    segments = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
    starts = np.cumsum([0, *sizes[:-1]])
    return tokens, (np.arange(length) - np.repeat(starts, sizes)).astype(np.int32), segments


OBJECTIVE = SpanCorruption()
