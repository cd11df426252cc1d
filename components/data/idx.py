"""MNIST IDX files: read (gzipped or not) with validation, and write.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the data. Images are ``idx3`` (N×H×W), labels ``idx1`` (N).
"""

from __future__ import annotations

import gzip
import struct

import numpy as np

from components.errors import DataError

UBYTE = 0x08


def parse_idx(data: bytes, name: str, expected_ndim: int) -> np.ndarray:
    """Decode an IDX payload (already gunzipped) into a ``uint8`` array, or raise :class:`DataError`."""
    if len(data) < 4:
        raise DataError(f"{name}: truncated IDX file, expected a 4-byte header, found {len(data)} bytes")
    zero1, zero2, dtype, ndim = data[:4]
    if (zero1, zero2) != (0, 0) or dtype != UBYTE:
        raise DataError(f"{name}: expected IDX magic 00 00 08 0{expected_ndim} (unsigned bytes), found {data[:4].hex(' ')}")
    if ndim != expected_ndim:
        raise DataError(f"{name}: expected {expected_ndim} dimensions, found {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header, expected {header} bytes, found {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    found = len(data) - header
    if found != expected:
        raise DataError(f"{name}: truncated or padded IDX data, shape {list(shape)} needs {expected} bytes, found {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx(raw: bytes, name: str, expected_ndim: int) -> np.ndarray:
    """Decode IDX bytes, gunzipping first when ``name`` ends in ``.gz``."""
    if name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{name}: not a valid gzip file ({exc})") from None
    return parse_idx(raw, name, expected_ndim)


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a ``uint8`` array as IDX bytes."""
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {array.dtype}")
    header = bytes([0, 0, UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_gz(array: np.ndarray) -> bytes:
    """IDX bytes, gzipped deterministically (mtime 0), as MNIST distributes them."""
    return gzip.compress(encode_idx(array), mtime=0)
