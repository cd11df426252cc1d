"""MNIST IDX files: read (gzipped or not) with validation, and write.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the data. Images are ``idx3`` (N×H×W), labels ``idx1`` (N).
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from components.errors import DataError

UBYTE = 0x08


# A header may claim any shape; this bounds what one file may inflate to before a byte of it is inflated.
MAX_IDX_BYTES = 16 * 2**30
CHUNK = 1 << 20


def read_header(stream: BinaryIO, name: str, expected_ndim: int) -> tuple[int, ...]:
    """Read and check an IDX header from ``stream``; return the shape it declares."""
    magic = _read(stream, 4, name)
    if len(magic) < 4:
        raise DataError(f"{name}: truncated IDX file, expected a 4-byte header, found {len(magic)} bytes")
    zero1, zero2, dtype, ndim = magic
    if (zero1, zero2) != (0, 0) or dtype != UBYTE:
        raise DataError(f"{name}: expected IDX magic 00 00 08 0{expected_ndim} (unsigned bytes), found {magic.hex(' ')}")
    if ndim != expected_ndim:
        raise DataError(f"{name}: expected {expected_ndim} dimensions, found {ndim}")
    dims = _read(stream, 4 * ndim, name)
    if len(dims) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header, expected {4 + 4 * ndim} bytes, found {4 + len(dims)}")
    shape = struct.unpack(f">{ndim}I", dims)
    if math.prod(shape) > MAX_IDX_BYTES:
        raise DataError(f"{name}: expected an IDX file of at most {MAX_IDX_BYTES // 2**30} GiB of data, found a header "
                        f"declaring shape {list(shape)} ({math.prod(shape) / 2**30:.1f} GiB)")
    return shape


def copy_payload(stream: BinaryIO, out: BinaryIO, shape: tuple[int, ...], name: str) -> None:
    """Copy exactly the bytes ``shape`` declares from ``stream`` to ``out``, in bounded chunks.

    Reading stops one byte past the declared size, so a file that inflates to far more than its header
    says is refused after that byte, never after inflating all of it.
    """
    expected, copied = math.prod(shape), 0
    while copied < expected:
        chunk = _read(stream, min(CHUNK, expected - copied), name)
        if not chunk:
            raise DataError(f"{name}: truncated IDX data, shape {list(shape)} needs {expected} bytes, found {copied}")
        out.write(chunk)
        copied += len(chunk)
    if _read(stream, 1, name):
        raise DataError(f"{name}: padded IDX data, shape {list(shape)} needs {expected} bytes, found more")


def open_payload(path: Path, name: str) -> BinaryIO:
    """The file at ``path``, decompressed on the fly when ``name`` ends in ``.gz``."""
    raw = open(path, "rb")
    return gzip.GzipFile(fileobj=raw, mode="rb") if name.endswith(".gz") else raw


def _read(stream: BinaryIO, size: int, name: str) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: not a valid gzip file ({exc})") from None


def read_idx(raw: bytes, name: str, expected_ndim: int) -> np.ndarray:
    """Decode IDX bytes (gunzipping first when ``name`` ends in ``.gz``) into a ``uint8`` array."""
    stream: BinaryIO = io.BytesIO(raw)
    if name.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    shape = read_header(stream, name, expected_ndim)
    out = io.BytesIO()
    copy_payload(stream, out, shape, name)
    return np.frombuffer(out.getbuffer(), dtype=np.uint8).reshape(shape).copy()


def parse_idx(data: bytes, name: str, expected_ndim: int) -> np.ndarray:
    """Decode an uncompressed IDX payload into a ``uint8`` array, or raise :class:`DataError`."""
    return read_idx(data, name.removesuffix(".gz"), expected_ndim)


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a ``uint8`` array as IDX bytes."""
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {array.dtype}")
    header = bytes([0, 0, UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_gz(array: np.ndarray) -> bytes:
    """IDX bytes, gzipped deterministically (mtime 0), as MNIST distributes them."""
    return gzip.compress(encode_idx(array), mtime=0)
