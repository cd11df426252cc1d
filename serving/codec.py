"""Request decoding, validation and response encoding: pure functions, no server and no model.

Every way a request can be wrong becomes :class:`InvalidInput` (HTTP 400) with a message that says
what was expected and what was found. Every accepted request becomes ``float32 [N,C,H,W]`` pixels on
the 0–255 scale, shaped like the model's input; normalization happens later, in the same code
training used (:func:`components.predict.predict_proba`).

Accepted inputs:

- v1 ``{"instances": [...], "parameters": {"top_k": K}}``; each instance is pixel values (``H×W``
  for grayscale models, or ``C×H×W``) or ``{"b64": "<base64 PNG or JPEG>"}``;
- v2 exactly one input tensor: ``images`` (FP32 ``[N,C,H,W]``) or ``image_bytes`` (BYTES ``[N]``, each
  element a PNG/JPEG: raw bytes over the binary tensor extension, base64 text in JSON).

Encoded images of any size and mode are converted by :func:`components.imagefile.decode_fit`, the
function data preparation uses for training images (resize to cover, center crop: ``model.json``'s ``preprocess``).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson
from kserve import InferOutput
from kserve.errors import InvalidInput

from components.imagefile import MAX_IMAGE_PIXELS, Header, ImageDecodeError, decode_fit, read_header_only
from components.modelfile import ModelCard

PIXELS_INPUT = "images"
BYTES_INPUT = "image_bytes"
FP32 = "FP32"
BYTES = "BYTES"
INT64 = "INT64"
OUTPUTS = ("probabilities", "class", "label")
TOP_K_OUTPUTS = ("top_k_classes", "top_k_probabilities")
V1_FIELDS = ("instances", "parameters")
# top_k is ours; binary_data_output is the binary tensor extension's, honoured by KServe's encoder.
KNOWN_PARAMETERS = ("top_k", "binary_data_output")


@dataclass(frozen=True)
class ServingSpec:
    """What a request must fit: the model's input shape, its classes and the per-request limit."""

    channels: int
    height: int
    width: int
    class_names: tuple[str, ...]
    max_instances: int
    # Decoded pixels one request's encoded images may add up to, counted from their headers.
    max_request_pixels: int = MAX_IMAGE_PIXELS

    @classmethod
    def from_card(cls, card: ModelCard, max_instances: int, max_request_pixels: int = MAX_IMAGE_PIXELS) -> ServingSpec:
        return cls(card.in_channels, card.height, card.width, tuple(card.class_names), max_instances, max_request_pixels)

    @property
    def input_shape(self) -> list[int]:
        return [self.channels, self.height, self.width]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Batch:
    """A decoded request: pixels ``float32 [N,C,H,W]`` in 0–255, the top-k option, and per image what it
    looked like as sent (``{"width", "height", "mode"}`` of an image file from its header, ``{"shape"}`` of
    pixel values), which inference data collection records."""

    pixels: np.ndarray
    top_k: int | None
    sent: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class Tensor:
    """One v2 input tensor, as it arrived: ``data`` is JSON (nested lists) or a flat array from binary."""

    name: str
    datatype: str
    shape: list[Any]
    data: Any


# -- v1 ----------------------------------------------------------------------------------------------


def decode_v1(payload: Any, spec: ServingSpec) -> Batch:
    """Validate a v1 body (parsed JSON, or bytes when it came without a JSON content type) and
    return its pixels and options."""
    if isinstance(payload, bytes | bytearray):
        payload = parse_json(bytes(payload))
    if not isinstance(payload, dict) or "instances" not in payload:
        found = f"fields {sorted(payload)}" if isinstance(payload, dict) else _kind(payload)
        raise InvalidInput(f'expected a JSON object with an "instances" list, found {found}')
    unknown = sorted(set(payload) - set(V1_FIELDS))
    if unknown:
        raise InvalidInput(f"expected only the fields {list(V1_FIELDS)}, found unknown field(s) {unknown}")
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f'expected "instances" to be a list, found {_kind(instances)}')
    check_count(len(instances), spec)
    top_k = parse_parameters(payload.get("parameters"), spec)
    wheres = [f"instance {i}" for i in range(len(instances))]
    encoded = [_instance_bytes(instance, where) for instance, where in zip(instances, wheres)]
    headers = iter(check_pixel_budget([(w, e) for w, e in zip(wheres, encoded) if e is not None], spec))
    images = [decode_instance(i, spec, w) if e is None else decode_image(e, spec, w) for i, e, w in zip(instances, encoded, wheres)]
    # Headers come in the order of the encoded instances; pixel values were checked, so their first elements give the shape.
    sent = tuple(_sent_shape(_nested_shape(i)) if e is None else _sent_header(next(headers)) for i, e in zip(instances, encoded))
    return Batch(np.stack(images), top_k, sent)


def _instance_bytes(instance: Any, where: str) -> bytes | None:
    """The encoded image of a ``{"b64": ...}`` instance; None for pixel values."""
    if not isinstance(instance, dict):
        return None
    if set(instance) != {"b64"}:
        raise InvalidInput(f'{where}: expected {{"b64": "<base64 PNG or JPEG>"}} or pixel values, found an object with fields {sorted(instance)}')
    return base64_bytes(instance["b64"], where)


def has_encoded_images(payload: Any) -> bool:
    """Whether a v1 body carries ``{"b64": ...}`` instances (decoding those is real work)."""
    instances = payload.get("instances") if isinstance(payload, dict) else None
    return isinstance(instances, list) and any(isinstance(i, dict) for i in instances)


def parse_json(body: bytes) -> Any:
    """A body KServe left unparsed because of its content type (``curl -d`` sends form encoding)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"expected a JSON body, found invalid JSON ({exc})") from None


def decode_instance(instance: Any, spec: ServingSpec, where: str) -> np.ndarray:
    """One v1 instance (pixel values or ``{"b64": ...}``) as ``float32 [C,H,W]``."""
    encoded = _instance_bytes(instance, where)
    if encoded is not None:
        return decode_image(encoded, spec, where)
    array = _numeric_array(instance, where, f"a nested list of numbers shaped {_instance_shape_text(spec)}")
    if array.ndim == 2 and spec.channels == 1:
        array = array[None]
    if list(array.shape) != spec.input_shape:
        raise InvalidInput(f"{where}: expected shape {_instance_shape_text(spec)}, found {list(array.shape)}")
    check_pixels(array, where)
    return array.astype(np.float32)


# -- v2 ----------------------------------------------------------------------------------------------


def decode_v2(inputs: Sequence[Tensor], parameters: Any, spec: ServingSpec) -> Batch:
    """Validate a v2 request's inputs and parameters and return its pixels and options."""
    if len(inputs) != 1:
        raise InvalidInput(f'expected exactly one input tensor, "{PIXELS_INPUT}" ({FP32}) or "{BYTES_INPUT}" ({BYTES}), found {len(inputs)}')
    tensor = inputs[0]
    top_k = parse_parameters(parameters, spec)
    if tensor.name == PIXELS_INPUT:
        pixels = decode_pixel_tensor(tensor, spec)
        return Batch(pixels, top_k, (_sent_shape(list(pixels.shape[1:])),) * len(pixels))
    if tensor.name == BYTES_INPUT:
        pixels, headers = decode_bytes_tensor(tensor, spec)
        return Batch(pixels, top_k, tuple(_sent_header(h) for h in headers))
    raise InvalidInput(f'expected an input named "{PIXELS_INPUT}" ({FP32}) or "{BYTES_INPUT}" ({BYTES}), found "{tensor.name}"')


def decode_pixel_tensor(tensor: Tensor, spec: ServingSpec) -> np.ndarray:
    """An FP32 ``[N,C,H,W]`` tensor of pixel values, checked before and after its data is read."""
    expected = f"[N, {', '.join(map(str, spec.input_shape))}]"
    if tensor.datatype != FP32:
        raise InvalidInput(f'expected datatype {FP32} for "{PIXELS_INPUT}", found {tensor.datatype}')
    shape = _shape(tensor.shape)
    if len(shape) != 4 or shape[1:] != spec.input_shape:
        raise InvalidInput(f'expected "{PIXELS_INPUT}" shaped {expected}, found {tensor.shape}')
    check_count(shape[0], spec)
    array = _numeric_array(tensor.data, "input", f"{FP32} numbers")
    if array.size != math.prod(shape):
        raise InvalidInput(f"expected {math.prod(shape)} {FP32} values for shape {shape}, found {array.size}")
    array = array.reshape(shape)
    check_pixels(array, "input")
    return array.astype(np.float32, copy=False)


def decode_bytes_tensor(tensor: Tensor, spec: ServingSpec) -> tuple[np.ndarray, list[Header]]:
    """A BYTES ``[N]`` (or ``[N,1]``) tensor of encoded images, each decoded like a v1 ``b64`` instance;
    also each image's header as sent."""
    if tensor.datatype != BYTES:
        raise InvalidInput(f'expected datatype {BYTES} for "{BYTES_INPUT}", found {tensor.datatype}')
    shape = _shape(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidInput(f'expected "{BYTES_INPUT}" shaped [N] or [N, 1], found {tensor.shape}')
    check_count(shape[0], spec)
    elements = _flatten(tensor.data)
    if len(elements) != shape[0]:
        raise InvalidInput(f"expected {shape[0]} encoded images for shape {shape}, found {len(elements)}")
    encoded = [(f"image {i}", _element_bytes(e, f"image {i}")) for i, e in enumerate(elements)]
    headers = check_pixel_budget(encoded, spec)
    return np.stack([decode_image(data, spec, where) for where, data in encoded]), headers


def _element_bytes(element: Any, where: str) -> bytes:
    # Binary tensor data carries raw image bytes; JSON can only carry text, so images arrive base64-encoded.
    if isinstance(element, bytes | bytearray):
        return bytes(element)
    return base64_bytes(element, where)


# -- images, pixels, parameters --------------------------------------------------------------------------


def decode_base64_image(text: Any, spec: ServingSpec, where: str) -> np.ndarray:
    """Base64 text of a PNG/JPEG file as ``float32 [C,H,W]`` pixels."""
    return decode_image(base64_bytes(text, where), spec, where)


def base64_bytes(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: expected a base64 string of a PNG or JPEG file, found {_kind(text)}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: expected base64 text of a PNG or JPEG file, found characters or padding that are not base64") from None


def check_pixel_budget(encoded: Sequence[tuple[str, bytes]], spec: ServingSpec) -> list[Header]:
    """Refuse a request whose images would decode to more than ``spec.max_request_pixels`` in all, counted
    from each image's header before any is decoded: decoding is the costly step (CPU and memory), and a
    small file can claim a huge image. Returns the headers, in order."""
    total, first_over, headers = 0, None, []
    for where, data in encoded:
        try:
            header = read_header_only(data)
        except ImageDecodeError as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        headers.append(header)
        total += header.pixels
        if first_over is None and total > spec.max_request_pixels:
            first_over = f"{where}, {header.width}x{header.height}"
    if first_over is not None:
        raise InvalidInput(f"expected at most {spec.max_request_pixels:,} decoded pixels per request, found {total:,} "
                           f"in {len(encoded)} images (the first over the budget: {first_over})")
    return headers


def decode_image(encoded: bytes, spec: ServingSpec, where: str) -> np.ndarray:
    """PNG/JPEG/WebP bytes of any size and mode as ``float32 [C,H,W]``, fitted exactly as data preparation
    fitted the training images (:func:`components.imagefile.decode_fit`)."""
    try:
        pixels, _ = decode_fit(encoded, spec.channels, spec.height, spec.width)
    except ImageDecodeError as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    return pixels.astype(np.float32)


def check_pixels(array: np.ndarray, where: str) -> None:
    """Pixel values must be finite and on the 0–255 scale the model's normalization assumes."""
    # Two reductions instead of three: min and max propagate NaN, and an infinity is an extreme.
    low, high = float(array.min()), float(array.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InvalidInput(f"{where}: expected finite pixel values, found NaN or infinity")
    if low < 0 or high > 255:
        raise InvalidInput(f"{where}: expected pixel values in 0–255, found values from {low:g} to {high:g}")


def check_count(count: int, spec: ServingSpec) -> None:
    if count < 1:
        raise InvalidInput(f"expected at least one image, found {count}")
    if count > spec.max_instances:
        raise InvalidInput(f"expected at most {spec.max_instances} images per request, found {count}")


def parse_parameters(parameters: Any, spec: ServingSpec) -> int | None:
    """Check request parameters; return ``top_k`` (``None`` when not asked for)."""
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise InvalidInput(f'expected "parameters" to be an object, found {_kind(parameters)}')
    unknown = sorted(set(parameters) - set(KNOWN_PARAMETERS))
    if unknown:
        raise InvalidInput(f"expected parameters among {list(KNOWN_PARAMETERS)}, found unknown parameter(s) {unknown}")
    top_k = parameters.get("top_k")
    if top_k is None:
        return None
    # bool is an int in Python; true is not a count.
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= spec.num_classes:
        raise InvalidInput(f"expected top_k to be an integer from 1 to {spec.num_classes}, found {top_k!r}")
    return top_k


# -- binary tensor data ------------------------------------------------------------------------------------


def split_bytes_elements(raw: bytes) -> list[bytes]:
    """Split a BYTES tensor's binary data (each element: 4-byte little-endian length, then the bytes)."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"expected a 4-byte length prefix at byte {offset} of the BYTES data, found {len(raw) - offset} bytes")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"expected {length} bytes for BYTES element {len(elements)}, found {len(raw) - offset}")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


# -- responses -----------------------------------------------------------------------------------------------


def encode_v1(probs: np.ndarray, spec: ServingSpec, top_k: int | None) -> dict[str, Any]:
    """The v1 response: per image the class, its label, and all probabilities or the top k."""
    predictions = []
    # Rounded in numpy and converted in C, not one round(float()) per value (the same numbers: float64 rint).
    rounded = np.round(probs.astype(np.float64), 6).tolist() if top_k is None else None
    for i, row in enumerate(probs):
        index = int(row.argmax())
        prediction: dict[str, Any] = {"class": index, "label": spec.class_names[index]}
        if rounded is not None:
            prediction["probabilities"] = rounded[i]
        else:
            prediction["top_k"] = [
                {"class": int(c), "label": spec.class_names[c], "probability": round(float(row[c]), 6)} for c in _top_indices(row, top_k)
            ]
        predictions.append(prediction)
    return {"predictions": predictions}


class Output(NamedTuple):
    """One v2 output as the answer carries it: ``data`` a flat list."""

    name: str
    shape: list[int]
    datatype: str
    data: list


def encode_v2(probs: np.ndarray, spec: ServingSpec, top_k: int | None) -> list[InferOutput]:
    """The v2 outputs (:func:`v2_outputs`) as KServe's ``InferOutput``\\s."""
    return [InferOutput(o.name, o.shape, o.datatype, data=o.data) for o in v2_outputs(probs, spec, top_k)]


def v2_outputs(probs: np.ndarray, spec: ServingSpec, top_k: int | None) -> list[Output]:
    """The v2 outputs: ``probabilities``, ``class`` and ``label``, plus ``top_k_*`` when asked for."""
    classes = probs.argmax(axis=1).astype(np.int64)
    outputs = [
        _output("probabilities", probs.astype(np.float32), FP32),
        _output("class", classes, INT64),
        _output("label", np.array([spec.class_names[c] for c in classes], dtype=object), BYTES),
    ]
    if top_k is not None:
        top = np.stack([_top_indices(row, top_k) for row in probs]).astype(np.int64)
        outputs.append(_output("top_k_classes", top, INT64))
        outputs.append(_output("top_k_probabilities", np.take_along_axis(probs, top, axis=1).astype(np.float32), FP32))
    return outputs


def v2_json(response_id: str | None, model_name: str, model_version: str | None, outputs: Sequence[Any]) -> dict[str, Any]:
    """A v2 JSON answer as KServe's ``to_rest`` writes it, from outputs with ``name``, ``shape``, ``datatype`` and a
    ``data`` list (:class:`Output` or KServe's ``InferOutput``)."""
    tensors = [{"name": o.name, "shape": o.shape, "datatype": o.datatype, "data": o.data} for o in outputs]
    return {"id": response_id, "model_name": model_name, "model_version": model_version, "outputs": tensors}


def _output(name: str, array: np.ndarray, datatype: str) -> Output:
    # Data as a flat list: KServe 0.21's gRPC encoder fails on numpy data when the client sent raw
    # (binary) inputs; REST, JSON or binary, takes either. tolist() builds in C the list that
    # set_data_from_numpy(binary_data=False) builds one .item() at a time.
    return Output(name, list(array.shape), datatype, array.ravel().tolist())


def output_types(spec: ServingSpec) -> list[dict[str, Any]]:
    """The v2 metadata for :func:`encode_v2`'s outputs (``top_k_*`` only when ``top_k`` is set)."""
    return [
        {"name": "probabilities", "datatype": FP32, "shape": [-1, spec.num_classes]},
        {"name": "class", "datatype": INT64, "shape": [-1]},
        {"name": "label", "datatype": BYTES, "shape": [-1]},
        {"name": "top_k_classes", "datatype": INT64, "shape": [-1, -1]},
        {"name": "top_k_probabilities", "datatype": FP32, "shape": [-1, -1]},
    ]


def input_types(spec: ServingSpec) -> list[dict[str, Any]]:
    """The v2 metadata for the two accepted inputs (a request sends exactly one of them)."""
    return [
        {"name": PIXELS_INPUT, "datatype": FP32, "shape": [-1, *spec.input_shape]},
        {"name": BYTES_INPUT, "datatype": BYTES, "shape": [-1]},
    ]


def check_requested_outputs(names: Sequence[str], top_k: int | None) -> None:
    """A v2 request may name the outputs it wants; each must be one :func:`encode_v2` produces."""
    available = [*OUTPUTS, *(TOP_K_OUTPUTS if top_k is not None else ())]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InvalidInput(f"expected requested outputs among {available}, found {unknown}")


# -- helpers -----------------------------------------------------------------------------------------------------


def _top_indices(row: np.ndarray, k: int) -> np.ndarray:
    # Stable sort: equal probabilities keep class order, so the answer never depends on the batch.
    return np.argsort(-row, kind="stable")[:k]


def _numeric_array(data: Any, where: str, expected: str) -> np.ndarray:
    """``data`` as a numeric array, refusing what numpy would silently convert (numeric strings, booleans).

    Not yet float32: range checks run on the values as sent, so 1e300 is reported as out of range.
    """
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(f"{where}: expected {expected}, found ragged or non-numeric data") from None
    if array.dtype.kind not in "iuf" or array.size == 0:
        found = "no values" if array.size == 0 else f"{_dtype_text(array)} values"
        raise InvalidInput(f"{where}: expected {expected}, found {found}")
    return array


def _shape(shape: Any) -> list[int]:
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"expected a shape of non-negative integers, found {shape!r}")
    return [int(d) for d in shape]


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, np.ndarray):
        return list(data.ravel())
    if not isinstance(data, list):
        raise InvalidInput(f"expected a list of encoded images, found {_kind(data)}")
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _nested_shape(values: Any) -> list[int]:
    """The shape of a checked (rectangular) nested list, from its first elements: no second conversion."""
    shape = []
    while isinstance(values, list):
        shape.append(len(values))
        values = values[0] if values else None
    return shape


def _sent_shape(shape: list[int]) -> dict[str, Any]:
    return {"shape": shape}


def _sent_header(header: Header) -> dict[str, Any]:
    return {"width": header.width, "height": header.height, "mode": header.mode}


def _instance_shape_text(spec: ServingSpec) -> str:
    c, h, w = spec.input_shape
    return f"[{h}, {w}] or [{c}, {h}, {w}]" if c == 1 else f"[{c}, {h}, {w}]"


def _dtype_text(array: np.ndarray) -> str:
    return {"b": "boolean", "U": "string", "S": "string", "O": "mixed or non-numeric", "c": "complex"}.get(array.dtype.kind, str(array.dtype))


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if value is None:
        return "null"
    return {dict: "an object", str: "a string", bool: "a boolean", bytes: "a non-JSON body"}.get(type(value), type(value).__name__)
