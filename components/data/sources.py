"""Read a raw data set from a store: MNIST IDX files or an ImageFolder tree, detected automatically.

- MNIST IDX: ``PREFIX-images-idx3-ubyte[.gz]`` with a matching ``PREFIX-labels-idx1-ubyte[.gz]``
  (e.g. ``train-…`` and ``t10k-…``); every pair found is pooled, and the pipeline splits it itself.
  Classes are the digits ``0``–``9``.
- ImageFolder: ``<class>/<image>.png|jpg|jpeg``; classes are the folder names, sorted.

Every problem raises :class:`DataError` naming the file and saying what was expected.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from components.data.idx import read_idx
from components.errors import DataError
from components.preprocessing import image_to_array
from components.store import Store

IDX_IMAGES = re.compile(r"^(?P<prefix>.+)-images-idx3-ubyte(?P<gz>\.gz)?$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MNIST_CLASSES = [str(d) for d in range(10)]


@dataclass
class RawDataset:
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    source_format: str


def load_raw(store: Store) -> RawDataset:
    """Detect the layout of the raw data in ``store`` and load it."""
    keys = store.list()
    if not keys:
        raise DataError(f"no files in {store.uri}: expected MNIST IDX files or an ImageFolder tree (<class>/<image>.png)")
    if any(IDX_IMAGES.match(k.rsplit("/", 1)[-1]) for k in keys):
        return _load_mnist(store, keys)
    image_keys = [k for k in keys if k.lower().endswith(IMAGE_SUFFIXES)]
    if image_keys:
        return _load_image_folder(store, image_keys)
    raise DataError(
        f"{store.uri}: expected MNIST IDX files (train-images-idx3-ubyte[.gz] …) or an ImageFolder tree "
        f"(<class>/<image>.png|jpg), found {keys[:5]}{' …' if len(keys) > 5 else ''}"
    )


def _load_mnist(store: Store, keys: list[str]) -> RawDataset:
    images, labels = [], []
    for key in keys:
        match = IDX_IMAGES.match(key.rsplit("/", 1)[-1])
        if not match:
            continue
        label_key = _matching_labels(key, match, keys)
        x = read_idx(store.read_bytes(key), key, expected_ndim=3)
        y = read_idx(store.read_bytes(label_key), label_key, expected_ndim=1)
        if len(x) != len(y):
            raise DataError(f"{key} has {len(x)} images but {label_key} has {len(y)} labels")
        if len(y) and y.max() >= len(MNIST_CLASSES):
            bad = int(np.argmax(y >= len(MNIST_CLASSES)))
            raise DataError(f"{label_key}: label {int(y[bad])} at index {bad} is outside the class range 0–9")
        images.append(x)
        labels.append(y)
    _check_same_size(images, [k for k in keys if IDX_IMAGES.match(k.rsplit("/", 1)[-1])])
    return RawDataset(
        images=np.concatenate(images)[:, None, :, :],
        labels=np.concatenate(labels).astype(np.int64),
        class_names=list(MNIST_CLASSES),
        source_format="mnist-idx",
    )


def _matching_labels(image_key: str, match: re.Match, keys: list[str]) -> str:
    folder = image_key[: -len(match.group(0))]
    for suffix in (".gz", ""):
        candidate = f"{folder}{match.group('prefix')}-labels-idx1-ubyte{suffix}"
        if candidate in keys:
            return candidate
    raise DataError(f"{image_key} has no labels file: expected {folder}{match.group('prefix')}-labels-idx1-ubyte[.gz]")


def _check_same_size(images: list[np.ndarray], names: list[str]) -> None:
    first = images[0].shape[1:]
    for array, name in zip(images, names):
        if array.shape[1:] != first:
            raise DataError(f"{name}: expected {first[0]}x{first[1]} images like {names[0]}, found {array.shape[1]}x{array.shape[2]}")


def _load_image_folder(store: Store, keys: list[str]) -> RawDataset:
    nested = [k for k in keys if k.count("/") >= 1]
    if len(nested) != len(keys):
        loose = next(k for k in keys if "/" not in k)
        raise DataError(f"{loose}: expected images inside class folders (<class>/<image>.png), found one at the top level")
    class_names = sorted({k.split("/")[-2] for k in keys})
    first = _decode_image(store, keys[0], None)
    channels, reference = first.mode_channels, keys[0]
    arrays, labels = [], []
    for key in keys:
        image = first if key == reference else _decode_image(store, key, channels)
        if image.array.shape != first.array.shape:
            raise DataError(
                f"{key}: expected {first.array.shape[2]}x{first.array.shape[1]} images like {reference}, "
                f"found {image.array.shape[2]}x{image.array.shape[1]}"
            )
        arrays.append(image.array)
        labels.append(class_names.index(key.split("/")[-2]))
    return RawDataset(np.stack(arrays), np.asarray(labels, dtype=np.int64), class_names, "imagefolder")


@dataclass
class _Decoded:
    array: np.ndarray
    mode_channels: int


def _decode_image(store: Store, key: str, channels: int | None) -> _Decoded:
    try:
        with Image.open(io.BytesIO(store.read_bytes(key))) as image:
            image.load()
            # The first image fixes the channel count: grayscale stays grayscale, anything else is RGB.
            wanted = channels or (1 if image.mode in ("L", "1", "I;16", "I") else 3)
            return _Decoded(image_to_array(image, wanted), wanted)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{key}: expected a PNG or JPEG image, could not decode it ({exc})") from None
