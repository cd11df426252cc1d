"""Request decoding and validation: every way a request can be wrong becomes :class:`InvalidInput`.

Both protocols carry pixel values on the 0–255 scale, shaped like the model's input
(``model.json``): v1 ``{"instances": [...]}`` with one ``H×W`` or ``C×H×W`` nested list per image,
v2 one FP32 tensor ``[N, C, H, W]``. Decoding yields ``float32 [N,C,H,W]`` pixels; normalization is
applied later by the same code training used. Pure functions: no server, no model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kserve.errors import InvalidInput

from components.modelfile import ModelCard

V2_INPUT_NAME = "images"
V2_DATATYPE = "FP32"


def decode_v1(payload: Any, card: ModelCard, max_batch: int) -> np.ndarray:
    """Validate a v1 body (already parsed JSON) and return ``float32 [N,C,H,W]`` pixels."""
    if not isinstance(payload, dict) or "instances" not in payload:
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise InvalidInput(f'expected a JSON object with an "instances" list, found {found}')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(f'expected "instances" to be a non-empty list, found {_describe(instances)}')
    _check_batch(len(instances), max_batch)
    images = [_instance_pixels(i, instance, card) for i, instance in enumerate(instances)]
    return np.stack(images)


def _instance_pixels(index: int, instance: Any, card: ModelCard) -> np.ndarray:
    try:
        array = np.asarray(instance, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidInput(f"instance {index}: expected a nested list of numbers shaped {_shape_text(card)}, found ragged or non-numeric data") from None
    if array.ndim == 2 and card.in_channels == 1:
        array = array[None]
    if list(array.shape) != card.input_shape:
        raise InvalidInput(f"instance {index}: expected shape {_shape_text(card)}, found {list(array.shape)}")
    check_pixels(array, f"instance {index}")
    return array


def check_v2_header(name: str, datatype: str, shape: list[int], card: ModelCard, max_batch: int) -> None:
    """Check a v2 input's name, datatype and shape before its data is read."""
    expected_shape = f"[N, {', '.join(map(str, card.input_shape))}]"
    if name != V2_INPUT_NAME:
        raise InvalidInput(f'expected an input named "{V2_INPUT_NAME}", found "{name}"')
    if datatype != V2_DATATYPE:
        raise InvalidInput(f"expected datatype {V2_DATATYPE}, found {datatype}")
    if len(shape) != 4 or list(shape[1:]) != card.input_shape:
        raise InvalidInput(f"expected shape {expected_shape}, found {list(shape)}")
    _check_batch(shape[0], max_batch)


def decode_v2_data(shape: list[int], data: np.ndarray) -> np.ndarray:
    """Validate a v2 tensor's values (header already checked); return ``float32 [N,C,H,W]`` pixels."""
    array = data.astype(np.float32, copy=False).reshape(shape)
    check_pixels(array, "input")
    return array


def check_pixels(array: np.ndarray, where: str) -> None:
    if not np.isfinite(array).all():
        raise InvalidInput(f"{where}: expected finite pixel values, found NaN or infinity")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise InvalidInput(f"{where}: expected pixel values in 0–255, found values from {low:g} to {high:g}")


def _check_batch(count: int, max_batch: int) -> None:
    if count < 1:
        raise InvalidInput(f"expected at least one image, found {count}")
    if count > max_batch:
        raise InvalidInput(f"expected at most {max_batch} images per request, found {count}")


def _shape_text(card: ModelCard) -> str:
    c, h, w = card.input_shape
    return f"[{h}, {w}] or [{c}, {h}, {w}]" if c == 1 else f"[{c}, {h}, {w}]"


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return "an empty list"
    return type(value).__name__
