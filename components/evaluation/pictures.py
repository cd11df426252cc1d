"""The evaluation report's pictures: the confusion matrix as inline SVG and test images as small PNGs.

SVG keeps the matrix's numbers and class names crisp text at any zoom and needs no plotting library; the
test images are pixels, so they are PNGs, shrunk when they are taken (a thumbnail is a few hundred bytes
whatever the data set's image size).
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

THUMBNAIL_SIDE = 96  # the longest side of a kept test image, in pixels
MAX_MATRIX_CLASSES = 100  # above this the matrix is not drawn: 10,000 cells is already past reading
COUNTS_UP_TO = 20  # classes up to which each cell shows its count (smaller cells have no room)
MATRIX_SIDE = 400  # target side of the cell grid, in pixels
LABEL_CHARS = 10  # class names are shortened to this many characters on the axes
DIAGONAL, ERROR = (31, 119, 180), (214, 39, 40)  # blue: right answers; red: confusions
FAINTEST = 0.15  # the lightest shade of a non-empty cell: one confusion in a thousand must still show


def png_thumbnail(image: np.ndarray) -> tuple[bytes, int, int]:
    """One ``uint8 [C,H,W]`` image (C of 1, 3 or 4) as PNG bytes, its longest side at most THUMBNAIL_SIDE;
    returns ``(png, width, height)``."""
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [C,H,W] image with C of 1, 3 or 4, got {image.dtype} {list(image.shape)}")
    pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue(), picture.width, picture.height


def _shade(colour: tuple[int, int, int], strength: float) -> str:
    """``colour`` mixed with white: 0 is white, 1 the full colour."""
    mixed = [round(255 - (255 - c) * strength) for c in colour]
    return "#{:02x}{:02x}{:02x}".format(*mixed)


def confusion_svg(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """The confusion matrix as an SVG picture: rows are the true class, columns the predicted class.

    A cell's colour is its share of its row (of the images of that true class): blue on the diagonal, red
    off it, so the confusions stand out whatever the class sizes; an empty cell is white, and any other at
    least FAINTEST. Counts are written in cells up to COUNTS_UP_TO classes and every cell has a tooltip.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(class_names)
    cell = max(4, min(40, MATRIX_SIDE // max(n, 1)))
    names = [name if len(name) <= LABEL_CHARS else name[:LABEL_CHARS - 1] + "…" for name in class_names]
    label_px = 7 * max(len(name) for name in names) + 10
    left, top = 20 + label_px, 20 + label_px
    rows = counts.sum(axis=1)
    parts = [
        f'<text x="{left + n * cell / 2:.0f}" y="12" font-size="12" text-anchor="middle">predicted class</text>',
        f'<text x="12" y="{top + n * cell / 2:.0f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + n * cell / 2:.0f})">true class</text>',
    ]
    every = -(-12 // cell)  # label every k-th class, so labels 11 px high do not overlap in small cells
    for i, name in enumerate(names):
        if i % every:
            continue
        middle = i * cell + cell / 2
        parts.append(f'<text x="{left - 4}" y="{top + middle + 4:.1f}" font-size="11" text-anchor="end">{html.escape(name)}</text>')
        parts.append(f'<text x="{left + middle + 4:.1f}" y="{top - 4}" font-size="11" '
                     f'transform="rotate(-90 {left + middle + 4:.1f} {top - 4})">{html.escape(name)}</text>')
    for t in range(n):
        for p in range(n):
            parts.append(_cell(counts[t, p], rows[t], t == p, left + p * cell, top + t * cell, cell, n,
                               class_names[t], class_names[p]))
    width, height = left + n * cell + 10, top + n * cell + 10
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="confusion" width="{width}" height="{height}" '
            f'role="img" aria-label="confusion matrix">{"".join(parts)}</svg>')


def _cell(count: int, row_total: int, diagonal: bool, x: int, y: int, size: int, n: int, true: str, predicted: str) -> str:
    strength = FAINTEST + (1 - FAINTEST) * count / row_total if count else 0.0
    fill = _shade(DIAGONAL if diagonal else ERROR, strength)
    tip = f"<title>true {html.escape(true)}, predicted {html.escape(predicted)}: {count}</title>"
    edge = ' stroke="#ddd"' if size >= 10 else ""  # a grid line in a tiny cell would be all one sees
    box = f'<rect x="{x}" y="{y}" width="{size}" height="{size}" fill="{fill}"{edge}>{tip}</rect>'
    if n > COUNTS_UP_TO or not count:
        return box
    ink = "#fff" if strength > 0.5 else "#222"
    return (box + f'<text x="{x + size / 2:.1f}" y="{y + size / 2 + 4:.1f}" font-size="11" text-anchor="middle" '
            f'fill="{ink}" pointer-events="none">{count}</text>')
