"""Canonical Huffman coding of small alphabets (at most 256 symbols), with numpy.

A code is given by its code lengths alone (one per symbol, 0 for an unused symbol): the canonical
code assigns codewords in order of (length, symbol), so a file stores only the lengths (one byte
per symbol) and the decoder rebuilds the same codewords. Lengths are limited to MAX_LENGTH bits so
that decoding is one table lookup per symbol.
"""

from __future__ import annotations

import heapq

import numpy as np

MAX_LENGTH = 16  # the decoder's lookup table has 2^MAX_LENGTH entries


class HuffmanError(ValueError):
    """A code table or a bit stream that cannot be decoded."""


def code_lengths(counts: np.ndarray, max_length: int = MAX_LENGTH) -> np.ndarray:
    """Huffman code lengths (uint8, 0 for symbols that never occur) for the symbol `counts`.

    One used symbol gets length 1. Where the optimal tree is deeper than `max_length` (only for very
    skewed counts), the counts are halved (kept >= 1) until it fits: slightly longer codes for the
    rarest symbols, a negligible loss, the usual remedy."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts > 0)
    if len(used) == 1:
        lengths[used] = 1
    if len(used) <= 1:
        return lengths
    weights = counts[used].copy()
    while True:
        depth = _tree_depths(weights)
        if depth.max() <= max_length:
            lengths[used] = depth
            return lengths
        weights = np.maximum(weights // 2, 1)


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    """Leaf depths of a Huffman tree over `weights` (ties broken by insertion order: deterministic)."""
    heap: list[tuple[int, int, list[int]]] = [(int(w), i, [i]) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    depth = np.zeros(len(weights), dtype=np.int64)
    order = len(weights)
    while len(heap) > 1:
        w1, _, leaves1 = heapq.heappop(heap)
        w2, _, leaves2 = heapq.heappop(heap)
        depth[leaves1 + leaves2] += 1
        heapq.heappush(heap, (w1 + w2, order, leaves1 + leaves2))
        order += 1
    return depth


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical codeword (int64) of each symbol from its length; checks the lengths make a prefix code."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths < 0).any() or (lengths > MAX_LENGTH).any():
        raise HuffmanError(f"code lengths must be 0..{MAX_LENGTH}")
    used = np.flatnonzero(lengths)
    # Kraft: a prefix code with these lengths exists iff sum 2^-l <= 1 (exact in integers).
    if int(np.sum(np.left_shift(1, MAX_LENGTH - lengths[used]))) > 1 << MAX_LENGTH:
        raise HuffmanError("code lengths violate the Kraft inequality (not a prefix code)")
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(used, key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol], previous = code, int(lengths[symbol])
        code += 1
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """The concatenated codewords of `symbols`, most significant bit first, zero-padded to a byte."""
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = canonical_codes(lengths)
    if len(symbols) and (lengths[symbols] == 0).any():
        raise HuffmanError("a symbol to encode has no codeword")
    sym_len = lengths[symbols]
    owner = np.repeat(np.arange(len(symbols)), sym_len)  # the symbol each output bit belongs to
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(sym_len) - sym_len, sym_len)
    bits = (codes[symbols][owner] >> (sym_len[owner] - 1 - offset)) & 1
    return np.packbits(bits.astype(np.uint8)).tobytes()


def decode(payload: bytes | np.ndarray, lengths: np.ndarray, count: int) -> np.ndarray:
    """`count` symbols (int64) read back from `payload`; HuffmanError if it does not hold them."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = canonical_codes(lengths)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    used = np.flatnonzero(lengths)
    if len(used) == 0:
        raise HuffmanError("no symbol has a codeword")
    width = int(lengths.max())
    if len(payload) * 8 > count * width + 7:  # also bounds the memory decoding takes
        raise HuffmanError(f"{len(payload)} bytes are more than {count} symbols of at most {width} bits fill")
    # Lookup table over every `width`-bit window: the symbol whose codeword starts it, and its length.
    table_symbol = np.full(1 << width, -1, dtype=np.int64)
    table_length = np.zeros(1 << width, dtype=np.int64)
    for symbol in used:
        shift = width - int(lengths[symbol])
        start = int(codes[symbol]) << shift
        table_symbol[start : start + (1 << shift)] = symbol
        table_length[start : start + (1 << shift)] = lengths[symbol]
    bits = np.unpackbits(np.frombuffer(bytes(payload), dtype=np.uint8))
    available = len(bits)
    padded = np.concatenate([bits, np.zeros(width, dtype=np.uint8)]).astype(np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)[:available] @ (1 << np.arange(width - 1, -1, -1))
    window_list, symbols_of, lengths_of = windows.tolist(), table_symbol.tolist(), table_length.tolist()
    out = np.empty(count, dtype=np.int64)
    pos = 0
    for i in range(count):
        if pos >= available:
            raise HuffmanError(f"the bit stream ends after {i} of {count} symbols")
        w = window_list[pos]
        symbol = symbols_of[w]
        if symbol < 0:
            raise HuffmanError(f"bits at offset {pos} are no codeword")
        out[i] = symbol
        pos += lengths_of[w]
    if pos > available:
        raise HuffmanError(f"the bit stream ends inside symbol {count}")
    return out


def entropy_bits(symbols: np.ndarray, alphabet: int) -> float:
    """The empirical entropy bound of `symbols`: sum over symbols of -log2 p(symbol) (in bits)."""
    counts = np.bincount(np.asarray(symbols, dtype=np.int64), minlength=alphabet).astype(np.float64)
    used = counts[counts > 0]
    return float(-(used * np.log2(used / used.sum())).sum())
