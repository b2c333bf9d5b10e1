"""Reader for the IDX format of (Fashion-)MNIST, plain or gzipped, with checks that name the file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ssmoe_cli.errors import SsmoeError

# IDX type code -> numpy dtype (big-endian as stored).
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, remedy: str = "") -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into an array; raise SsmoeError on anything malformed."""
    path = Path(path)
    hint = f"; {remedy}" if remedy else ""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise SsmoeError(f"cannot read {path}: {exc}{hint}") from None
    if len(raw) < 4:
        raise SsmoeError(f"{path} is truncated ({len(raw)} bytes){hint}")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in _DTYPES or ndim == 0:
        raise SsmoeError(f"{path} is not an IDX file (bad magic number 0x{raw[:4].hex()}){hint}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SsmoeError(f"{path} is truncated inside its header{hint}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise SsmoeError(
            f"{path} holds {len(raw) - header} data bytes but its header promises {expected} "
            f"(shape {shape}): the file is truncated or corrupt{hint}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
