"""Byte path: range coding of integer symbols with integer PMF tables (constriction's queue coder).

Each symbol belongs to a group (a scale-table index for r, a channel for h), and each group has one
integer PMF over the values [-T, T] plus a final escape entry. Values outside [-T, T] are coded as
the escape symbol and, after all regular symbols, as a sign and an Exp-Golomb magnitude with uniform
models (CompressAI escapes the same way). Symbols are coded group by group in a fixed order, so a
group needs only one model, built once from its integer table: encoder and decoder hand constriction
exactly the same numbers and therefore build exactly the same models.
"""

from __future__ import annotations

from collections.abc import Sequence

import constriction
import numpy as np

from tandemseg.codec.errors import BitstreamCorrupt, CodecError

_MODEL = constriction.stream.model
MAX_MAGNITUDE_BITS = 30  # an escaped value is below 2**30 in magnitude; more means the bytes are damaged
_CHUNK = 16  # escape payload bits per uniform symbol (constriction's Uniform needs size < 2**24)


def quantize_pmf(probs: np.ndarray, bits: int) -> np.ndarray:
    """Float probabilities -> int64 counts summing to 2**bits, each at least 1 (every symbol stays codable).

    Deterministic (floor, then the remainder goes to the largest fractional parts, ties by index), so
    the same floats give the same integers; the tables are computed once and shipped with the weights.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    n, total = p.size, 1 << bits
    if n >= total:
        raise ValueError(f"{n} symbols do not fit {bits}-bit probabilities")
    p = p / p.sum() if p.sum() > 0 else np.full(n, 1.0 / n)
    scaled = p * (total - n)
    counts = np.floor(scaled).astype(np.int64) + 1
    deficit = int(total - counts.sum())
    if deficit > 0:
        order = np.argsort(-(scaled - np.floor(scaled)), kind="stable")
        counts[order[:deficit]] += 1
    return counts


def _models(tables: Sequence[np.ndarray], bits: int, used: np.ndarray) -> dict[int, object]:
    """One constriction Categorical per used group, from its integer table (exact in float64)."""
    return {int(g): _MODEL.Categorical(np.asarray(tables[g], np.float64) / (1 << bits), perfect=False) for g in used}


def _to_symbols(values: np.ndarray, half: int) -> np.ndarray:
    """Map values in [-half, half] to 0..2*half and everything else to the escape symbol 2*half + 1."""
    sym = values + half
    sym[np.abs(values) > half] = 2 * half + 1
    return sym


def encode_symbols(values: np.ndarray, groups: np.ndarray, tables: Sequence[np.ndarray], bits: int) -> bytes:
    """Integer values (flat) with their group ids (flat) -> bytes (little-endian 32-bit words)."""
    values, groups = np.asarray(values, np.int64).ravel(), np.asarray(groups, np.int64).ravel()
    encoder = constriction.stream.queue.RangeEncoder()
    used = np.unique(groups)
    models = _models(tables, bits, used)
    escaped: list[tuple[int, int]] = []  # (value, half) in coding order
    for g in used:
        vals = values[groups == g]  # positions in raster order within the group
        half = (len(tables[g]) - 2) // 2
        sym = _to_symbols(vals, half)
        encoder.encode(sym.astype(np.int32), models[int(g)])
        escaped += [(int(v), half) for v in vals[np.abs(vals) > half]]
    for value, half in escaped:
        _encode_escape(encoder, value, half)
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_symbols(data: bytes, groups: np.ndarray, tables: Sequence[np.ndarray], bits: int) -> np.ndarray:
    """Inverse of `encode_symbols` given the same group ids and tables -> int64 values (flat)."""
    groups = np.asarray(groups, np.int64).ravel()
    if len(data) % 4:
        raise BitstreamCorrupt(f"an entropy-coded stream is a whole number of 32-bit words, got {len(data)} bytes")
    try:
        return _decode(np.frombuffer(data, "<u4").astype(np.uint32), groups, tables, bits)
    except BitstreamCorrupt:
        raise
    except Exception as e:  # constriction raises on streams no encoder could have produced
        raise BitstreamCorrupt(f"the entropy-coded stream cannot be decoded ({type(e).__name__}: {e})") from None


def _decode(words: np.ndarray, groups: np.ndarray, tables: Sequence[np.ndarray], bits: int) -> np.ndarray:
    decoder = constriction.stream.queue.RangeDecoder(words)
    used = np.unique(groups)
    models = _models(tables, bits, used)
    values = np.empty(groups.size, np.int64)
    pending: list[tuple[int, int]] = []  # (flat position, half) of escaped values, in coding order
    for g in used:
        where = np.flatnonzero(groups == g)
        half = (len(tables[g]) - 2) // 2
        sym = np.asarray(decoder.decode(models[int(g)], where.size), np.int64)
        values[where] = sym - half
        pending += [(int(p), half) for p in where[sym == 2 * half + 1]]
    for pos, half in pending:
        values[pos] = _decode_escape(decoder, half)
    return values


def _encode_escape(encoder, value: int, half: int) -> None:
    """Sign, then Exp-Golomb of m = |value| - half - 1 >= 0: the bit length of m + 1, then its low bits."""
    m1 = abs(value) - half  # = m + 1 >= 1
    nbits = m1.bit_length() - 1
    if nbits > MAX_MAGNITUDE_BITS:
        raise CodecError(f"latent value {value} is too large to code (|value| >= 2^{MAX_MAGNITUDE_BITS}: the codec diverged?)")
    encoder.encode(np.array([int(value < 0)], np.int32), _MODEL.Uniform(2))
    encoder.encode(np.array([nbits], np.int32), _MODEL.Uniform(MAX_MAGNITUDE_BITS + 1))
    for shift in range(0, nbits, _CHUNK):
        width = min(_CHUNK, nbits - shift)
        encoder.encode(np.array([(m1 >> shift) & ((1 << width) - 1)], np.int32), _MODEL.Uniform(max(2, 1 << width)))


def _decode_escape(decoder, half: int) -> int:
    negative = int(decoder.decode(_MODEL.Uniform(2), 1)[0])
    nbits = int(decoder.decode(_MODEL.Uniform(MAX_MAGNITUDE_BITS + 1), 1)[0])
    m1 = 1 << nbits
    for shift in range(0, nbits, _CHUNK):
        width = min(_CHUNK, nbits - shift)
        chunk = int(decoder.decode(_MODEL.Uniform(max(2, 1 << width)), 1)[0])
        if chunk >> width:
            raise BitstreamCorrupt("an escaped latent value has more bits than its length says")
        m1 |= chunk << shift
    magnitude = m1 + half
    return -magnitude if negative else magnitude
