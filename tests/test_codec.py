"""Property tests for request decoding (serving.codec, serving.protocol): pure functions, no server.

The contract: whatever a client sends, decoding either yields ``float32 [N,C,H,W]`` pixels with finite
values in 0–255 and 1 ≤ N ≤ the limit, or raises :class:`InvalidInput` — never another exception.
"""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from kserve.errors import InvalidInput
from PIL import Image

from components.imagefile import decode_fit
from serving.codec import (
    ServingSpec,
    Tensor,
    decode_image,
    decode_v1,
    decode_v2,
    encode_v1,
    encode_v2,
    parse_parameters,
    split_bytes_elements,
)
from serving.protocol import parse_infer_body

GRAY = ServingSpec(1, 4, 5, ("a", "b", "c"), max_instances=3)
RGB = ServingSpec(3, 4, 5, ("a", "b", "c"), max_instances=3)
SPECS = st.sampled_from([GRAY, RGB])
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_valid_pixels(pixels: np.ndarray, spec: ServingSpec) -> None:
    assert pixels.dtype == np.float32
    assert pixels.ndim == 4 and list(pixels.shape[1:]) == spec.input_shape
    assert 1 <= len(pixels) <= spec.max_instances
    assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 255


def decodes_or_rejects(decode, *args) -> np.ndarray | None:
    """Run ``decode``; InvalidInput is a rejection, anything else escapes and fails the test."""
    try:
        return decode(*args)
    except InvalidInput as exc:
        assert str(exc)  # a rejection always says why
        return None


# JSON values of every kind, nested: what a client can put anywhere in a body.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(["b64", "instances", "x", "top_k"]), children, max_size=3),
    max_leaves=30,
)
pixel_values = st.floats(0, 255, width=32) | st.integers(0, 255)


@st.composite
def pixel_images(draw, spec: ServingSpec) -> np.ndarray:
    return draw(arrays(np.float32, spec.input_shape, elements=st.floats(0, 255, width=32)))


@st.composite
def encoded_images(draw) -> bytes:
    """Real PNG/JPEG files of any small size and mode, as a client might upload them."""
    fmt = draw(st.sampled_from(["PNG", "JPEG"]))
    modes = ["L", "RGB", "RGBA", "P", "LA", "I;16", "1"] if fmt == "PNG" else ["L", "RGB", "CMYK"]
    mode = draw(st.sampled_from(modes))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rgb = draw(arrays(np.uint8, (height, width, 3)))
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").convert(mode).save(buffer, fmt)
    return buffer.getvalue()


# -- v1 ------------------------------------------------------------------------------------------------------


@FAST
@given(spec=SPECS, data=st.data())
def test_valid_v1_pixel_instances_decode_to_exactly_the_values_sent(spec, data):
    images = data.draw(st.lists(pixel_images(spec), min_size=1, max_size=spec.max_instances))
    as_hw = spec.channels == 1 and data.draw(st.booleans())
    instances = [(i[0] if as_hw else i).tolist() for i in images]
    batch = decode_v1({"instances": instances}, spec)
    assert_valid_pixels(batch.pixels, spec)
    np.testing.assert_array_equal(batch.pixels, np.stack(images))


@FAST
@given(spec=SPECS, payload=json_values)
def test_any_json_body_decodes_to_valid_pixels_or_is_rejected(spec, payload):
    batch = decodes_or_rejects(decode_v1, payload, spec)
    if batch is not None:
        assert_valid_pixels(batch.pixels, spec)


@FAST
@given(spec=SPECS, instances=st.lists(json_values, min_size=1, max_size=4), top_k=json_values)
def test_any_instances_and_parameters_decode_to_valid_pixels_or_are_rejected(spec, instances, top_k):
    batch = decodes_or_rejects(decode_v1, {"instances": instances, "parameters": {"top_k": top_k}}, spec)
    if batch is not None:
        assert_valid_pixels(batch.pixels, spec)
        assert batch.top_k is None or 1 <= batch.top_k <= spec.num_classes


@FAST
@given(spec=SPECS, value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**80), 2**80))
def test_pixel_values_outside_0_to_255_or_not_finite_are_rejected(spec, value):
    image = np.zeros(spec.input_shape).tolist()
    image[0][0][0] = value
    batch = decodes_or_rejects(decode_v1, {"instances": [image]}, spec)
    accepted = np.isfinite(float(value)) and 0 <= value <= 255
    assert (batch is not None) == accepted


# -- images ----------------------------------------------------------------------------------------------------


@FAST
@given(spec=SPECS, encoded=encoded_images())
def test_any_png_or_jpeg_is_converted_exactly_as_training_converts_it(spec, encoded):
    pixels = decode_image(encoded, spec, "image")
    expected, _ = decode_fit(encoded, spec.channels, spec.height, spec.width)
    np.testing.assert_array_equal(pixels, expected.astype(np.float32))
    assert_valid_pixels(pixels[None], spec)


@FAST
@given(spec=SPECS, encoded=encoded_images(), cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4))
def test_damaged_images_decode_to_valid_pixels_or_are_rejected(spec, encoded, cut, flips):
    damaged = bytearray(encoded[: cut % (len(encoded) + 1)])
    for position, mask in flips:
        if damaged:
            damaged[position % len(damaged)] ^= mask
    pixels = decodes_or_rejects(decode_image, bytes(damaged), spec, "image")
    if pixels is not None:
        assert_valid_pixels(pixels[None], spec)


@FAST
@given(spec=SPECS, blob=st.binary(max_size=64))
def test_arbitrary_bytes_and_base64_text_are_rejected_or_decoded(spec, blob):
    for instance in ({"b64": base64.b64encode(blob).decode()}, {"b64": blob.decode("latin-1")}):
        batch = decodes_or_rejects(decode_v1, {"instances": [instance]}, spec)
        if batch is not None:
            assert_valid_pixels(batch.pixels, spec)


def test_an_image_larger_than_the_pixel_limit_is_rejected_before_decoding(monkeypatch):
    monkeypatch.setattr("components.imagefile.MAX_IMAGE_PIXELS", 100)
    buffer = io.BytesIO()
    Image.new("L", (11, 10)).save(buffer, "PNG")
    with pytest.raises(InvalidInput, match="expected at most 100 pixels, found a 11x10 PNG"):
        decode_image(buffer.getvalue(), GRAY, "image")


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


BUDGET = ServingSpec(1, 4, 5, ("a", "b", "c"), max_instances=3, max_request_pixels=300)


def test_the_pixel_budget_counts_every_encoded_image_of_a_request_in_v1_and_v2():
    images = [png_bytes(10, 10), png_bytes(10, 10), png_bytes(10, 11)]  # 310 pixels in all, over 300
    message = "expected at most 300 decoded pixels per request, found 310 in 3 images (the first over the budget: {}, 10x11)"
    with pytest.raises(InvalidInput) as v1:
        decode_v1({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}, BUDGET)
    assert str(v1.value) == message.format("instance 2")
    with pytest.raises(InvalidInput) as v2:
        decode_v2([Tensor("image_bytes", "BYTES", [3], images)], None, BUDGET)
    assert str(v2.value) == message.format("image 2")
    assert len(decode_v2([Tensor("image_bytes", "BYTES", [3], images[:2] + [png_bytes(10, 10)])], None, BUDGET).pixels) == 3


def test_pixel_values_do_not_count_against_the_pixel_budget():
    pixels = [[[0.0] * 5] * 4] * 2
    batch = decode_v1({"instances": [*pixels, {"b64": base64.b64encode(png_bytes(15, 20)).decode()}]}, BUDGET)
    assert batch.pixels.shape == (3, 1, 4, 5)


# -- v2 -------------------------------------------------------------------------------------------------------------

shapes = st.lists(st.integers(-2, 6), max_size=5) | st.just([2, 1, 4, 5]) | st.just([1, 3, 4, 5]) | json_values
datatypes = st.sampled_from(["FP32", "BYTES", "INT64", "FP16", "fp32", ""])


@FAST
@given(spec=SPECS, name=st.sampled_from(["images", "image_bytes", "x"]), datatype=datatypes, shape=shapes,
       data=json_values | arrays(np.float32, st.integers(0, 130), elements=st.floats(width=32)) | st.lists(st.binary(max_size=30), max_size=3),
       parameters=json_values)
def test_any_v2_tensor_decodes_to_valid_pixels_or_is_rejected(spec, name, datatype, shape, data, parameters):
    batch = decodes_or_rejects(decode_v2, [Tensor(name, datatype, shape, data)], parameters, spec)
    if batch is not None:
        assert_valid_pixels(batch.pixels, spec)


@FAST
@given(spec=SPECS, data=st.data())
def test_valid_fp32_tensors_decode_to_exactly_the_values_sent(spec, data):
    n = data.draw(st.integers(1, spec.max_instances))
    pixels = data.draw(arrays(np.float32, (n, *spec.input_shape), elements=st.floats(0, 255, width=32)))
    flat = pixels.ravel() if data.draw(st.booleans()) else pixels.ravel().tolist()
    batch = decode_v2([Tensor("images", "FP32", [n, *spec.input_shape], flat)], {"top_k": 2}, spec)
    np.testing.assert_array_equal(batch.pixels, pixels)
    assert batch.top_k == 2


@FAST
@given(spec=SPECS, images=st.lists(encoded_images(), min_size=1, max_size=3), as_base64=st.booleans())
def test_bytes_tensors_carry_raw_or_base64_images(spec, images, as_base64):
    data = [base64.b64encode(i).decode() for i in images] if as_base64 else images
    batch = decode_v2([Tensor("image_bytes", "BYTES", [len(images)], data)], None, spec)
    expected = [decode_image(i, spec, "image") for i in images]
    np.testing.assert_array_equal(batch.pixels, np.stack(expected))


@FAST
@given(value=json_values)
def test_top_k_must_be_an_integer_within_the_classes(value):
    result = decodes_or_rejects(parse_parameters, {"top_k": value}, GRAY)
    accepted = type(value) is int and 1 <= value <= GRAY.num_classes
    assert (result is not None) == accepted or value is None


# -- the binary tensor extension -------------------------------------------------------------------------------------


@FAST
@given(elements=st.lists(st.binary(max_size=20), max_size=5))
def test_bytes_elements_round_trip(elements):
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    assert split_bytes_elements(raw) == elements


@FAST
@given(raw=st.binary(max_size=40))
def test_arbitrary_bytes_data_splits_or_is_rejected(raw):
    elements = decodes_or_rejects(split_bytes_elements, raw)
    if elements is not None:
        assert sum(4 + len(e) for e in elements) == len(raw)


binary_inputs = st.fixed_dictionaries(
    {"name": st.sampled_from(["images", "image_bytes"]), "shape": shapes, "datatype": datatypes},
    optional={"parameters": st.dictionaries(st.just("binary_data_size"), json_values), "data": json_values},
)
binary_headers = st.fixed_dictionaries({"inputs": st.lists(binary_inputs, max_size=2)}, optional={"parameters": json_values, "id": json_values}) | json_values


@FAST
@given(header=binary_headers, tail=st.binary(max_size=40), length=st.none() | st.integers(-5, 200).map(str) | st.text(max_size=4))
def test_any_binary_body_parses_to_a_request_or_is_rejected(header, tail, length):
    body = json.dumps(header).encode() + tail
    request = decodes_or_rejects(parse_infer_body, body, length, "m")
    if request is not None:
        tensors = [Tensor(t.name, t.datatype, t.shape, t.data) for t in request.inputs]
        batch = decodes_or_rejects(decode_v2, tensors, request.parameters, RGB)
        if batch is not None:
            assert_valid_pixels(batch.pixels, RGB)


def test_a_binary_body_keeps_raw_image_bytes_and_fp32_values():
    pixels = np.arange(20, dtype=np.float32).reshape(1, 1, 4, 5)
    png = b"\x89PNG not really"
    header = {"inputs": [{"name": "images", "shape": [1, 1, 4, 5], "datatype": "FP32", "parameters": {"binary_data_size": 80}},
                         {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(png)}}],
              "parameters": {"top_k": 1}}
    head = orjson.dumps(header)
    request = parse_infer_body(head + pixels.tobytes() + struct.pack("<I", len(png)) + png, str(len(head)), "m")
    np.testing.assert_array_equal(request.inputs[0].data, pixels.ravel())
    assert request.inputs[1].data == [png]
    assert request.parameters == {"top_k": 1}


# -- responses -------------------------------------------------------------------------------------------------------------


@FAST
@given(probs=arrays(np.float32, st.tuples(st.integers(1, 4), st.just(3)), elements=st.floats(0, 1, width=32)), top_k=st.none() | st.integers(1, 3))
def test_v1_and_v2_responses_name_the_same_classes(probs, top_k):
    v1 = encode_v1(probs, GRAY, top_k)["predictions"]
    v2 = {o.name: o.as_numpy() for o in encode_v2(probs, GRAY, top_k)}
    assert [p["class"] for p in v1] == list(v2["class"]) == list(probs.argmax(1))
    assert [p["label"] for p in v1] == list(v2["label"])
    if top_k is not None:
        assert [[t["class"] for t in p["top_k"]] for p in v1] == v2["top_k_classes"].tolist()
        assert all(p["top_k"][0]["class"] == p["class"] for p in v1)
