"""The encoded form of one weight-shared layer in the exported file (Deep Compression, Han et al. 2016).

A layer's weight is flattened row-major (stacked experts included: E x out x in as one run) and
only its nonzero positions are stored, as two symbol streams and a codebook:

- codebook: the 2^bits shared values, float32;
- codes: for each stored weight in position order, the index of its value in the codebook (`bits` bits);
- relative indices: for each stored weight, the number of positions skipped since the previous one
  (`index_bits` bits). The largest symbol M = 2^index_bits - 1 is a filler: it skips M positions
  and stores no weight (unlike the paper's filler, a stored zero, it needs no code). A gap g is
  written as g // M fillers, then g % M.

Each stream is either packed at its fixed width (entropy "none") or canonical-Huffman coded
(entropy "huffman", the paper's last stage), with the code lengths stored per symbol (one byte each).

The parts are stored one after the other as one byte string (`PARTS` order; float32 little-endian
for the codebook), their sizes in the metadata (`parts`): one tensor per layer, since each tensor
costs some 80 bytes of file header, several percent of a small compressed file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ssmoe_cli.quantize import huffman

if TYPE_CHECKING:
    from ssmoe_cli.models.layers import Masked
    from ssmoe_cli.quantize.kmeans import SharedLayer

ENTROPY = ("huffman", "none")
PARTS = {
    "huffman": ("codebook", "codes_lengths", "codes", "index_lengths", "index"),
    "none": ("codebook", "codes", "index"),
}


def relative_indices(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """The index symbols of sorted flat `positions` (see the module docstring)."""
    filler = (1 << index_bits) - 1
    gaps = np.diff(np.concatenate([[-1], np.asarray(positions, dtype=np.int64)])) - 1
    fillers, rest = np.divmod(gaps, filler)
    symbols = np.full(int(fillers.sum()) + len(gaps), filler, dtype=np.int64)
    symbols[np.cumsum(fillers + 1) - 1] = rest  # each weight's own symbol after its fillers
    return symbols


def positions_of(symbols: np.ndarray, index_bits: int) -> np.ndarray:
    """The flat positions the index symbols describe (inverse of `relative_indices`)."""
    filler = (1 << index_bits) - 1
    real = symbols != filler
    return (np.cumsum(np.where(real, symbols + 1, filler)) - 1)[real]


def pack(symbols: np.ndarray, bits: int) -> bytes:
    """Fixed-width packing, most significant bit first (= the canonical code with every length `bits`)."""
    shifts = np.arange(bits - 1, -1, -1)
    return np.packbits(((np.asarray(symbols, dtype=np.int64)[:, None] >> shifts) & 1).astype(np.uint8)).tobytes()


def unpack(payload: np.ndarray, bits: int, count: int) -> np.ndarray:
    """`count` symbols of `bits` bits from a packed stream of exactly the bytes they fill."""
    if len(payload) != -(-count * bits // 8):
        raise huffman.HuffmanError(f"{len(payload)} bytes are not {count} symbols of {bits} bits")
    raw = np.unpackbits(np.asarray(payload, dtype=np.uint8))
    return raw[: count * bits].reshape(count, bits).astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1))


@dataclass(frozen=True)
class EncodedLayer:
    """One layer as stored: its parts as one byte string (uint8) and its metadata (JSON-able)."""

    blob: np.ndarray
    meta: dict[str, object]


def encode_layer(
    shape: list[int],
    positions: np.ndarray,
    codes: np.ndarray,
    codebook: np.ndarray,
    bits: int,
    index_bits: int,
    entropy: str,
) -> EncodedLayer:
    """Encode a weight-shared layer: nonzero flat `positions` (sorted) and their `codes` into `codebook`."""
    if entropy not in ENTROPY:
        raise ValueError(f"entropy={entropy!r}: one of {', '.join(ENTROPY)}")
    index = relative_indices(positions, index_bits)
    arrays = {"codebook": np.asarray(codebook, dtype="<f4").view(np.uint8)}
    if entropy == "huffman":
        for name, symbols, width in (("codes", codes, bits), ("index", index, index_bits)):
            lengths = huffman.code_lengths(np.bincount(symbols, minlength=1 << width))
            arrays[f"{name}_lengths"] = lengths
            arrays[name] = np.frombuffer(huffman.encode(symbols, lengths), dtype=np.uint8)
    else:
        arrays["codes"] = np.frombuffer(pack(codes, bits), dtype=np.uint8)
        arrays["index"] = np.frombuffer(pack(index, index_bits), dtype=np.uint8)
    meta = {
        "shape": list(shape),
        "nonzero": len(codes),
        "index_symbols": len(index),
        "bits": bits,
        "index_bits": index_bits,
        "entropy": entropy,
        "parts": [len(arrays[part]) for part in PARTS[entropy]],
    }
    return EncodedLayer(np.concatenate([arrays[part] for part in PARTS[entropy]]).astype(np.uint8), meta)


def _int(meta: dict[str, object], key: str, low: int, high: int) -> int:
    value = meta.get(key)
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise ValueError(f"{key}={value!r} is not an integer in [{low}, {high}]")
    return value


def check_meta(meta: dict[str, object]) -> tuple[int, int, int, int, int, str]:
    """(numel, bits, index_bits, nonzero, index_symbols, entropy) of a layer's metadata, checked;
    ValueError naming the first value that cannot be right."""
    shape = meta.get("shape")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ValueError(f"shape={shape!r} is not a list of sizes")
    numel = int(np.prod(shape, dtype=np.int64))
    bits, index_bits = _int(meta, "bits", 1, 8), _int(meta, "index_bits", 1, 8)
    nonzero = _int(meta, "nonzero", 0, numel)
    index_symbols = _int(meta, "index_symbols", nonzero, numel)
    entropy = meta.get("entropy")
    if entropy not in ENTROPY:
        raise ValueError(f"entropy={entropy!r} is not one of {', '.join(ENTROPY)}")
    sizes = meta.get("parts")
    count = len(PARTS[str(entropy)])
    if not (isinstance(sizes, list) and len(sizes) == count and all(_natural(n) for n in sizes)):
        raise ValueError(f"parts={sizes!r} is not {count} byte counts")
    return numel, bits, index_bits, nonzero, index_symbols, str(entropy)


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_layer(blob: np.ndarray, meta: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    """(flat positions, float32 values) of a stored layer; ValueError naming what does not fit."""
    numel, bits, index_bits, nonzero, index_symbols, entropy = check_meta(meta)
    sizes: list[int] = meta["parts"]  # type: ignore[assignment]  (check_meta checked it)
    if blob.dtype != np.uint8 or blob.ndim != 1 or len(blob) != sum(sizes):
        raise ValueError(f"its parts take {sum(sizes)} bytes, the stored ones are {blob.dtype} {tuple(blob.shape)}")
    ends = np.cumsum(sizes)
    arrays = {part: blob[end - size : end] for part, size, end in zip(PARTS[entropy], sizes, ends, strict=True)}
    if len(arrays["codebook"]) != 4 << bits:
        raise ValueError(f"the codebook takes {len(arrays['codebook'])} bytes, not {4 << bits} (2^{bits} float32)")
    codebook = arrays["codebook"].view("<f4").astype(np.float32)
    if entropy == "huffman":
        codes = huffman.decode(arrays["codes"], arrays["codes_lengths"][: 1 << bits], nonzero)
        index = huffman.decode(arrays["index"], arrays["index_lengths"][: 1 << index_bits], index_symbols)
    else:
        codes, index = unpack(arrays["codes"], bits, nonzero), unpack(arrays["index"], index_bits, index_symbols)
    positions = positions_of(index, index_bits)
    if len(positions) != nonzero or (nonzero and positions[-1] >= numel):
        raise ValueError(f"its relative indices give {len(positions)} positions, not {nonzero} within {numel}")
    return positions, codebook[codes]


def encode_shared(layer: Masked, shared: SharedLayer, entropy: str) -> EncodedLayer:
    """The encoded form of a weight-shared layer, after checking that the layer still holds exactly
    its shared values (codebook[codes] at its positions, zero elsewhere)."""
    flat = layer.masked_weight().detach().cpu().reshape(-1)
    values = shared.codebook[shared.codes]
    if torch.count_nonzero(flat) > len(values) or not torch.equal(flat[shared.positions], values):
        raise ValueError("a weight-shared layer changed after quantisation: quantise again before exporting")
    return encode_layer(
        list(layer.weight.shape),
        shared.positions.numpy(),
        shared.codes.numpy(),
        shared.codebook.numpy(),
        shared.bits,
        shared.index_bits,
        entropy,
    )


def decode_shared(
    key: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor], sep: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A stored shared layer's dense (weight, mask), its tensor `<key><sep>encoded` popped from
    `tensors`; KeyError when it is missing, ValueError for anything that does not decode."""
    blob = tensors.pop(f"{key}{sep}encoded").numpy()
    try:
        positions, values = decode_layer(blob, meta)
    except huffman.HuffmanError as exc:
        raise ValueError(str(exc)) from None
    shape = list(meta["shape"])  # decode_layer checked it
    weight = torch.zeros(int(np.prod(shape, dtype=np.int64)), dtype=torch.float32)
    mask = torch.zeros(weight.shape, dtype=torch.bool)
    index = torch.from_numpy(positions)
    weight[index], mask[index] = torch.from_numpy(values), True
    return weight.reshape(shape), mask.reshape(shape)
