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

from dataclasses import dataclass

import numpy as np

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
    n, c = pixels.shape[:2]
    flat = pixels.reshape(n, c, -1).astype(np.float64) / 255.0
    mean = flat.mean(axis=2)
    std = flat.std(axis=2)
    # Bin index per pixel (value 1.0 goes to the last bin), counted per image with one bincount.
    bins = np.minimum((flat.reshape(n, -1) * HIST_BINS).astype(np.int64), HIST_BINS - 1)
    offsets = (np.arange(n, dtype=np.int64) * HIST_BINS)[:, None]
    counts = np.bincount((bins + offsets).ravel(), minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    return ImageStats(mean=mean, std=std, hist=counts / max(1, bins.shape[1]))
