"""Decoding one encoded image file safely: the one decoder that data preparation and the predictor share.

The dangerous inputs are small files that decode into huge images (a 2 MiB PNG of 12000×12000
pixels is 430 MB of RGB), files that claim a format they are not, and truncated files. So the
header is read first and the pixel count and side lengths are checked before a single pixel is
decoded; PIL's own bomb limit is not relied on (its error does not name the file, and its limit is
far above what a classifier needs). Every failure is an :class:`ImageDecodeError` whose message
says what was expected and what was found; callers prefix it with where the image came from and
turn it into their own error type (``DataError`` for preparation, HTTP 400 for the predictor).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from components.presets import draft_for, fit_image

FORMATS = ("PNG", "JPEG", "WEBP")
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Far above any real photo (50 MP is a high-end camera), far below what would exhaust a worker's memory.
MAX_IMAGE_PIXELS = 50_000_000
MAX_SIDE = 30_000
# What PIL raises for bytes that are not a decodable image (it has no single error type).
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)

Image.MAX_IMAGE_PIXELS = None  # the checks below run first, on the header, with a message that names the file


class ImageDecodeError(ValueError):
    """An encoded image that cannot be used; the message says what was expected and what was found."""


@dataclass(frozen=True)
class Header:
    format: str
    mode: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes, max_pixels: int | None = None) -> tuple[Image.Image, Header]:
    """Open ``data`` reading only its header, and check its format and size before any pixel is decoded
    (at most ``max_pixels``, default :data:`MAX_IMAGE_PIXELS`)."""
    max_pixels = max_pixels or MAX_IMAGE_PIXELS
    if not data:
        raise ImageDecodeError("expected a PNG, JPEG or WebP image, found an empty (0-byte) file")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except _PIL_ERRORS:
        raise ImageDecodeError(f"expected a PNG, JPEG or WebP image, found {len(data)} bytes that are none of them "
                               f"(starting {data[:8]!r})") from None
    header = Header(image.format or "?", image.mode, image.width, image.height)
    if header.width < 1 or header.height < 1 or max(header.width, header.height) > MAX_SIDE:
        image.close()
        raise ImageDecodeError(f"expected sides of 1 to {MAX_SIDE} pixels, found a {header.width}x{header.height} image")
    if header.width * header.height > max_pixels:
        image.close()
        raise ImageDecodeError(f"expected at most {max_pixels:,} pixels, found a {header.width}x{header.height} "
                               f"{header.format} ({header.width * header.height:,} pixels)")
    return image, header


def read_header_only(data: bytes, max_pixels: int | None = None) -> Header:
    """The checked header of ``data`` (:func:`read_header`), the file closed again: what a caller needs to
    budget a batch of images before decoding any of them."""
    image, header = read_header(data, max_pixels)
    image.close()
    return header


def decode_fit(data: bytes, channels: int, height: int, width: int, max_pixels: int | None = None) -> tuple[np.ndarray, Header]:
    """Decode ``data`` and fit it to ``uint8 [channels, height, width]`` (:func:`components.presets.fit_image`);
    also return the header as the file had it."""
    image, header = read_header(data, max_pixels)
    with image:
        try:
            draft_for(image, height, width)
            image.load()
            return fit_image(image, channels, height, width), header
        except _PIL_ERRORS as exc:
            raise ImageDecodeError(f"expected a complete {header.format} image, found one that does not decode "
                                   f"({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
