"""What monitoring records of one image, computed the same way on training data and on served requests.

The predictor collects these per image (:mod:`serving.collect`); push computes them over the training split
and stores them with the version, so a drift report compares like with like and never re-reads the
training set. Statistics are taken on the pixels after preprocessing (fitted to the model's input size,
:mod:`components.presets`) and before normalization, on the 0–1 scale: what the network sees, whatever
size or mode the image was sent in.

The collected record (one JSON object per image, one line each, :data:`RECORD_FIELDS`) is the contract
between collection and the drift report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STATS_CHUNK_BYTES = 120 * 1024  # float32 pixels per image_stats chunk (see there)
HIST_BINS = 16  # intensity histogram over all channels: fractions of pixels in 16 equal bins of 0–1

# The fields of one collected record (JSON lines under collected/MODEL/date=YYYY-MM-DD/hour=HH/):
RECORD_FIELDS = {
    "time": "ISO 8601 UTC time the request was answered",
    "model": "model name in the REST paths",
    "version": "registry version served (null for an unregistered folder)",
    "request_id": "the request's id (v2 id, else one made up per request)",
    "index": "the image's position in its request",
    "sent": "the image as sent: {'width', 'height', 'mode'} for an image file, {'shape'} for a pixel tensor",
    "mean": "per-channel mean after preprocessing, 0–1",
    "std": "per-channel standard deviation after preprocessing, 0–1",
    "hist": f"fractions of pixels in {HIST_BINS} equal intensity bins of 0–1, all channels together",
    "predicted": "predicted class index",
    "label": "predicted class name",
    "confidence": "probability of the predicted class",
    "image": "key of the saved preprocessed image (PNG), when this record's image was sampled; else null",
}


@dataclass(frozen=True)
class ImageStats:
    """Per-image statistics of ``N`` images of ``C`` channels."""

    mean: np.ndarray  # float64 [N, C], 0–1
    std: np.ndarray  # float64 [N, C], 0–1
    hist: np.ndarray  # float64 [N, HIST_BINS], each row sums to 1


def image_stats(pixels: np.ndarray) -> ImageStats:
    """Statistics of ``[N, C, H, W]`` pixels on the 0–255 scale (uint8 shards or the predictor's float32 batch)."""
    if pixels.ndim != 4:
        raise ValueError(f"expected pixels shaped [N, C, H, W], got shape {list(pixels.shape)}")
    # A few images at a time: glibc serves allocations over 128 KiB with a fresh mmap, so larger temporaries
    # cost a page fault per 4 KiB on every call (50 MNIST images in a fresh process: 7.2 µs per image in one call
    # against 3.2 µs in chunks, benchmarks/request_path.py).
    most = max(1, STATS_CHUNK_BYTES // max(1, 4 * math.prod(pixels.shape[1:])))
    if len(pixels) <= most:
        return _image_stats(pixels)
    step = math.ceil(len(pixels) / math.ceil(len(pixels) / most))  # equal chunks: 50 images are 25 + 25, not 39 + 11
    parts = [_image_stats(pixels[i : i + step]) for i in range(0, len(pixels), step)]
    return ImageStats(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("mean", "std", "hist")))


def _image_stats(pixels: np.ndarray) -> ImageStats:
    # float32 working arrays, updated in place, sums accumulated in float64: the predictor's collection thread
    # runs this beside the forward pass on the same core, and float64 temporaries (four of them, 1.2 MB per 50
    # MNIST images) cost 3x the time and push the model out of the cache. Means and stds agree with a float64
    # computation to ~3e-8, far below the six decimals recorded; histograms are identical.
    n, c = pixels.shape[:2]
    scaled = pixels.reshape(n, c, -1).astype(np.float32)  # a copy, whatever the input's type
    scaled *= np.float32(1 / 255)
    mean = scaled.mean(axis=2, dtype=np.float64)
    squares = np.einsum("ncp,ncp->nc", scaled, scaled, dtype=np.float64)
    std = np.sqrt(np.maximum(squares / scaled.shape[2] - mean * mean, 0.0))
    # Bin index per pixel (value 1.0 goes to the last bin), counted per image with one bincount.
    flat = scaled.reshape(n, -1)
    flat *= HIST_BINS
    bins = flat.astype(np.int32)
    np.minimum(bins, HIST_BINS - 1, out=bins)
    bins += (np.arange(n, dtype=np.int32) * HIST_BINS)[:, None]
    counts = np.bincount(bins.ravel(), minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    return ImageStats(mean=mean, std=std, hist=counts / max(1, bins.shape[1]))
