"""Every image transform in the project, in one module that preparation, training, evaluation and serving import.

- :func:`fit_image` is the deterministic transform from a decoded image of any size and mode to
  ``uint8 [C,H,W]`` at the model's input size: mode conversion (16-bit scaled to 8, palette and alpha to
  RGB, RGB to grayscale for grayscale models), a resize that makes the image cover ``H×W`` with its
  aspect kept, and a center crop. Data preparation applies it once to every image and stores the result;
  evaluation reads what preparation stored; the predictor applies it to every image it is sent. For an
  image that already has the model's size and mode it is the identity. ``model.json`` records it
  (:data:`FIT`), so a version says what a client's photo goes through.
- The augmentation presets (training only) work on ``uint8 [N,C,H,W]`` batches: ``digits`` shifts by up
  to two pixels (handwriting is centred; flips would change the digit), ``photos`` takes a random
  resized crop and a horizontal flip, ``none`` leaves the batch alone. ``auto`` picks ``photos`` for
  colour data sets and ``digits`` otherwise.
- :func:`normalize` turns pixels into the network's input with the per-channel statistics that
  :class:`ChannelStats` gathers, streaming, while preparation writes the training split.

Only the training-side functions need torch, and they import it themselves: the decode processes of
data preparation import this module (through :mod:`components.imagefile`) and start in a fraction of
a second, without torch's import time and memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

MODES = {1: "L", 3: "RGB"}
FIT = "cover-resize-bilinear+center-crop"  # what model.json records as the serving transform
AUGMENT_PRESETS = ("auto", "none", "digits", "photos")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
GRAYSCALE_MODES = ("1", "L", "LA", "F", *SIXTEEN_BIT_MODES)


def channels_of_mode(mode: str) -> int:
    """1 for grayscale image modes (any bit depth), 3 for everything else (RGB, RGBA, palette, CMYK…)."""
    return 1 if mode in GRAYSCALE_MODES else 3


def fit_image(image: Image.Image, channels: int, height: int, width: int) -> np.ndarray:
    """``image`` as ``uint8 [channels, height, width]``: converted, resized to cover, center-cropped."""
    converted = _convert(image, channels)
    if (converted.height, converted.width) != (height, width):
        converted = _cover_crop(converted, height, width)
    array = np.asarray(converted, dtype=np.uint8)
    return array[None, :, :] if channels == 1 else array.transpose(2, 0, 1).copy()


def draft_for(image: Image.Image, height: int, width: int) -> None:
    """Let a JPEG decode at a reduced scale that still covers twice the target (much faster for photos).

    Called before ``image.load()``; a no-op for other formats. Part of :func:`fit_image`'s contract:
    preparation and serving both call it, so both see the same pixels.
    """
    if image.format == "JPEG":
        image.draft(image.mode, (2 * width, 2 * height))


def _convert(image: Image.Image, channels: int) -> Image.Image:
    if channels not in MODES:
        raise ValueError(f"expected 1 or 3 channels, got {channels}")
    if image.mode in SIXTEEN_BIT_MODES:
        # PIL's own conversion clips 16-bit values at 255 (a white image); scale them instead.
        wide = np.asarray(image).astype(np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL asks for this step for palettes with transparency
    return image if image.mode == MODES[channels] else image.convert(MODES[channels])


def _cover_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    # Resize to cover ``height × width``, then center-crop: done as one resize of the source box that the
    # crop keeps, so the pixels cut off are never computed (measured: 25% less time than resizing the whole
    # image and cropping; the pixels differ by at most 1 from that).
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    sx, sy = size[0] / image.width, size[1] / image.height
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    box = (left / sx, top / sy, (left + width) / sx, (top + height) / sy)
    return image.resize((width, height), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)


# -- training augmentation ----------------------------------------------------------------------------------


def resolve_augment(preset: str, channels: int) -> str:
    """The preset a training run uses: ``auto`` becomes ``photos`` for colour data, ``digits`` for grayscale."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"expected an augmentation preset in {AUGMENT_PRESETS}, got {preset!r}")
    if preset == "auto":
        return "photos" if channels == 3 else "digits"
    return preset


def augment(images: torch.Tensor, preset: str, generator: torch.Generator) -> torch.Tensor:
    """Apply a (resolved) preset to ``uint8 [N,C,H,W]``; randomness comes only from ``generator``."""
    if preset == "none":
        return images
    if preset == "digits":
        return random_shift(images, generator)
    if preset == "photos":
        return random_resized_crop_flip(images, generator)
    raise ValueError(f"expected a resolved augmentation preset (none, digits, photos), got {preset!r}")


def random_shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): cheap, label-preserving."""
    import torch
    from torch.nn import functional as F

    _, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def random_resized_crop_flip(images: torch.Tensor, generator: torch.Generator,
                             scale: tuple[float, float] = (0.35, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Per image: a crop of ``scale`` of the area and ``ratio`` aspect, resized back to ``H×W``; half are flipped.

    The batch is cropped as one ``grid_sample`` call (an affine grid per image) instead of N resizes.
    """
    import torch
    from torch.nn import functional as F

    n, _, h, w = images.shape
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])), generator=generator)
    aspect = torch.exp(log_ratio)
    crop_w = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the full width and height
    crop_h = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - crop_w)
    centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - crop_h)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = crop_w * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = crop_h, centre_y
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


# -- normalization ------------------------------------------------------------------------------------------


class ChannelStats:
    """Per-channel mean and standard deviation of ``uint8`` images, gathered a chunk of images at a time.

    Sums are kept per image in float64 (exact for any realistic data set size), so memory is one
    accumulator per channel whatever the number of images.
    """

    def __init__(self, channels: int):
        self.sum = np.zeros(channels)
        self.sum_sq = np.zeros(channels)
        self.count = 0

    def add(self, sums: np.ndarray, pixels: int) -> None:
        """Add images given as their per-channel sums ``float64 [2, C]`` (of the values, of their squares)
        over ``pixels`` pixels per channel: the decode processes compute them, the main process only adds."""
        self.sum += sums[0]
        self.sum_sq += sums[1]
        self.count += pixels

    def result(self) -> tuple[list[float], list[float]]:
        """(mean, std) on the 0–1 scale; std never below 1e-6 (a constant channel still normalizes)."""
        if self.count == 0:
            raise ValueError("expected at least one image for channel statistics, got none")
        mean = self.sum / self.count
        var = np.maximum(self.sum_sq / self.count - mean**2, 0.0)
        return [float(m / 255.0) for m in mean], [float(max(np.sqrt(v) / 255.0, 1e-6)) for v in var]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Scale ``[N,C,H,W]`` pixel values (0–255, any dtype) to the network's normalized float input."""
    import torch

    x = images.to(torch.float32) / 255.0
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
