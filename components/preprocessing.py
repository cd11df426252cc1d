"""Image conversion and normalization, shared by data preparation, training, evaluation and serving.

Images travel as ``uint8`` arrays shaped ``[N, C, H, W]`` (0–255) until the last moment;
:func:`normalize` turns them into the float tensor a network takes, with the per-channel mean and
standard deviation recorded in the model's ``model.json``. Nothing else in the project scales pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

MODES = {1: "L", 3: "RGB"}


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of ``uint8 [N,C,H,W]`` images, on the 0–1 scale."""
    scaled = images.astype(np.float64) / 255.0
    mean = scaled.mean(axis=(0, 2, 3))
    std = scaled.std(axis=(0, 2, 3))
    return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Scale ``[N,C,H,W]`` pixel values (0–255, any dtype) to the network's normalized float input."""
    x = images.to(torch.float32) / 255.0
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def image_to_array(image: Image.Image, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Convert a PIL image to ``uint8 [C,H,W]`` with ``channels`` channels, resized to ``size`` (H, W)."""
    if channels not in MODES:
        raise ValueError(f"expected 1 or 3 channels, got {channels}")
    converted = image.convert(MODES[channels])
    if size is not None and (converted.height, converted.width) != tuple(size):
        converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.uint8)
    return array[None, :, :] if channels == 1 else array.transpose(2, 0, 1).copy()


def as_nchw(images: np.ndarray) -> np.ndarray:
    """Give ``[N,H,W]`` grayscale images a channel axis; pass ``[N,C,H,W]`` through."""
    if images.ndim == 3:
        return images[:, None, :, :]
    if images.ndim == 4:
        return images
    raise ValueError(f"expected images shaped [N,H,W] or [N,C,H,W], got shape {list(images.shape)}")
