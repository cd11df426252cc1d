"""Serving tests: the predictor as a real KServe server process, called over HTTP (v1 and v2).

One shared server (``predictor`` in conftest) with small limits: at most 8 images per request, 1 MiB bodies.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys

import grpc
import numpy as np
import orjson
import pytest
import requests
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from PIL import Image

from components.imagefile import decode_fit
from components.modelfile import MANIFEST_FILE, METRICS_FILE, WEIGHTS_FILE
from serving.client import infer_v2, infer_v2_images, model_metadata, predict_v1, predict_v1_images, v2_classes, v2_output
from serving.model import VERSION_HEADER
from tests.conftest import SERVED_MODEL as MODEL
from tests.conftest import free_port, make_version_folder, start_predictor


def pixels(n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28)).astype(np.float32)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def photo(seed: int, size=(40, 30), mode="RGB") -> Image.Image:
    """A non-MNIST-shaped colour image: the server must resize and convert it."""
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2_probabilities(response) -> np.ndarray:
    return np.asarray(v2_output(response, "probabilities")).reshape(len(v2_classes(response)), -1)


# -- what it serves -----------------------------------------------------------------------------------------


def test_v1_and_v2_agree_and_return_probabilities(predictor):
    batch = pixels(3)
    v1 = predict_v1(predictor, MODEL, batch)
    v2 = infer_v2(predictor, MODEL, batch)
    assert len(v1) == 3 and all(abs(sum(p["probabilities"]) - 1) < 1e-4 for p in v1)
    assert [p["class"] for p in v1] == v2_classes(v2)
    assert [p["label"] for p in v1] == v2_output(v2, "label") == [str(p["class"]) for p in v1]
    np.testing.assert_allclose([p["probabilities"] for p in v1], v2_probabilities(v2), atol=1e-5)


def test_v1_accepts_hw_instances_for_grayscale(predictor):
    hw = pixels(1)[0, 0].tolist()
    response = requests.post(f"{predictor}/v1/models/{MODEL}:predict", json={"instances": [hw]}, timeout=30)
    assert response.json()["predictions"] == predict_v1(predictor, MODEL, pixels(1))


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "RGB"), ("JPEG", "L")])
def test_encoded_images_are_converted_by_the_training_preprocessing(predictor, fmt, mode):
    encoded = [encode(photo(seed, mode=mode), fmt) for seed in (1, 2)]
    # What data preparation would store for these files: components.imagefile.decode_fit.
    expected = np.stack([decode_fit(e, 1, 28, 28)[0] for e in encoded]).astype(np.float32)
    reference = v2_probabilities(infer_v2(predictor, MODEL, expected))
    v1 = predict_v1_images(predictor, MODEL, encoded)
    v2 = infer_v2_images(predictor, MODEL, encoded)
    np.testing.assert_allclose([p["probabilities"] for p in v1], reference, atol=1e-5)
    np.testing.assert_allclose(v2_probabilities(v2), reference, atol=1e-6)


def test_top_k_returns_the_k_most_likely_classes_in_order(predictor):
    batch = pixels(2, seed=3)
    full = np.asarray([p["probabilities"] for p in predict_v1(predictor, MODEL, batch)])
    v1 = predict_v1(predictor, MODEL, batch, top_k=3)
    v2 = infer_v2(predictor, MODEL, batch, top_k=3)
    for row, prediction, v2_top in zip(full, v1, np.reshape(v2_output(v2, "top_k_classes"), (2, 3))):
        expected = list(np.argsort(-row, kind="stable")[:3])
        assert [t["class"] for t in prediction["top_k"]] == expected == list(v2_top)
        assert [t["label"] for t in prediction["top_k"]] == [str(c) for c in expected]
        assert "probabilities" not in prediction


def test_metadata_describes_the_real_inputs_and_outputs(predictor):
    meta = model_metadata(predictor, MODEL)
    assert meta["inputs"] == [
        {"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]},
        {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
    ]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["probabilities"]["shape"] == [-1, 10] and outputs["class"]["datatype"] == "INT64"
    assert set(outputs) == {"probabilities", "class", "label", "top_k_classes", "top_k_probabilities"}
    assert requests.get(f"{predictor}/v2/models/{MODEL}/ready", timeout=5).json() == {"name": MODEL, "ready": True}


def test_metadata_and_every_inference_answer_name_the_version_served(predictor, served_version):
    """The version in the served MANIFEST.json (the registry's number), over HTTP: metadata, header, v2 body."""
    version = str(json.loads((served_version / MANIFEST_FILE).read_text())["version"])
    assert model_metadata(predictor, MODEL)["versions"] == [version]
    answers = {
        "v1": requests.post(f"{predictor}/v1/models/{MODEL}:predict", json={"instances": [GOOD]}, timeout=30),
        "v1 b64": post(predictor, f"/v1/models/{MODEL}:predict", v1([{"b64": b64(PNG)}])),
        "v2": post(predictor, f"/v2/models/{MODEL}/infer", v2([1, 1, 28, 28], [0.0] * 784)),
        "v2 binary": post(predictor, f"/v2/models/{MODEL}/infer", v2([1, 1, 28, 28], [0.0] * 784, parameters={"binary_data_output": True})),
    }
    for kind, response in answers.items():
        assert response.status_code == 200, (kind, response.text)
        assert response.headers.get(VERSION_HEADER) == version, (kind, dict(response.headers))
    assert answers["v2"].json()["model_version"] == version


def test_grpc_metadata_and_answers_name_the_version_served(predictor_grpc, served_version):
    version = str(json.loads((served_version / MANIFEST_FILE).read_text())["version"])

    async def call():
        client = InferenceGRPCClient(predictor_grpc)
        tensor = InferInput("images", [1, 1, 28, 28], "FP32")
        tensor.set_data_from_numpy(pixels(1), binary_data=True)
        try:
            return await client.infer(InferRequest(MODEL, [tensor]))
        finally:
            await client.close()

    with grpc.insecure_channel(predictor_grpc) as channel:
        metadata = GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=30)
    assert list(metadata.versions) == [version]
    assert asyncio.run(call()).model_version == version


def test_kserve_inference_rest_client_interoperates(predictor):
    """KServe's own Open Inference Protocol client: JSON and binary tensors, FP32 and BYTES."""
    batch = pixels(2, seed=5)
    png = [encode(Image.fromarray(p[0].astype(np.uint8))) for p in batch]
    expected = v2_probabilities(infer_v2(predictor, MODEL, batch))

    async def call(name, datatype, array, binary):
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        tensor = InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        try:
            return await client.infer(predictor, InferRequest(MODEL, [tensor], parameters={"top_k": 2}), model_name=MODEL)
        finally:
            await client.close()

    for binary in (False, True):
        response = asyncio.run(call("images", "FP32", batch, binary))
        np.testing.assert_allclose(response.get_output_by_name("probabilities").as_numpy(), expected, atol=1e-6)
        assert response.get_output_by_name("top_k_classes").as_numpy().shape == (2, 2)
    response = asyncio.run(call("image_bytes", "BYTES", np.array(png, dtype=object), True))
    np.testing.assert_allclose(response.get_output_by_name("probabilities").as_numpy(), expected, atol=1e-6)
    assert list(response.get_output_by_name("label").as_numpy()) == [str(c) for c in expected.argmax(1)]


def test_kserve_inference_grpc_client_interoperates(predictor, predictor_grpc):
    """The same over gRPC (asked for with --enable_grpc true): raw tensors, BYTES, top_k, and bad input as INVALID_ARGUMENT."""
    batch = pixels(2, seed=6)
    png = np.array([encode(Image.fromarray(p[0].astype(np.uint8))) for p in batch], dtype=object)
    expected = v2_probabilities(infer_v2(predictor, MODEL, batch))

    async def call(name, datatype, array, parameters=None):
        client = InferenceGRPCClient(predictor_grpc)
        tensor = InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        try:
            return await client.infer(InferRequest(MODEL, [tensor], parameters=parameters))
        finally:
            await client.close()

    for response in (asyncio.run(call("images", "FP32", batch, {"top_k": 2})), asyncio.run(call("image_bytes", "BYTES", png))):
        np.testing.assert_allclose(response.get_output_by_name("probabilities").as_numpy(), expected, atol=1e-6)
    with pytest.raises(grpc.RpcError) as rejected:
        asyncio.run(call("images", "FP32", np.full((1, 1, 28, 28), np.nan, dtype=np.float32)))
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expected finite pixel values" in rejected.value.details()


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_cli_client_sends_image_files_and_prints_predictions(predictor, tmp_path, protocol):
    paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
    paths[0].write_bytes(encode(photo(7)))
    paths[1].write_bytes(encode(photo(8), "JPEG"))
    run = subprocess.run([sys.executable, "-m", "serving.client", "--url", predictor, "--model", MODEL, "--protocol", protocol,
                          "--top-k", "2", *map(str, paths)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    expected = predict_v1_images(predictor, MODEL, [p.read_bytes() for p in paths])
    assert [p["file"] for p in printed] == [str(p) for p in paths]
    assert [p["class"] for p in printed] == [p["class"] for p in expected]
    assert all(len(p["top_k"]) == 2 for p in printed)


# -- bad input: always a clear 4xx in the {"error": ...} format --------------------------------------------------


def post(url: str, path: str, body: bytes, headers: dict | None = None) -> requests.Response:
    return requests.post(f"{url}{path}", data=body, headers={"Content-Type": "application/json", **(headers or {})}, timeout=30)


def v1(instances, **extra) -> bytes:
    return orjson.dumps({"instances": instances, **extra})


def v2(shape, data, name="images", datatype="FP32", **extra) -> bytes:
    return orjson.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra})


GOOD = [[0.0] * 28] * 28
PNG = encode(Image.new("L", (28, 28), 7))
NOISY_PNG = encode(photo(9, size=(64, 64)))  # big enough that a cut keeps the header and loses pixel data

V1_CASES = [
    (b"{not json", "expected a JSON body, found invalid JSON (Unrecognized request format: unexpected character"),
    (b'{"foo": 1}', 'expected a JSON object with an "instances" list'),
    (b"[1, 2]", 'expected a JSON object with an "instances" list, found a list'),
    (v1({}), 'Expected "instances" to be a list'),  # KServe's own check answers first
    (v1([]), "expected at least one image"),
    (v1([GOOD] * 9), "expected at most 8 images per request, found 9"),
    (v1([[1, 2, 3]]), "expected shape [28, 28] or [1, 28, 28], found [3]"),
    (v1([[[1, 2], [3]]]), "ragged or non-numeric"),
    (v1([[["1"] * 28] * 28]), "found string values"),
    (v1([[[True] * 28] * 28]), "found boolean values"),
    (v1([[[300.0] * 28] * 28]), "expected pixel values in 0–255, found values from 300 to 300"),
    (v1([[[1e39] * 28] * 28]), "expected pixel values in 0–255"),
    (v1([{"b64": "@@not base64@@"}]), "not base64"),
    (v1([{"b64": ""}]), "found an empty (0-byte) file"),
    (v1([{"b64": b64(b"hello, world")}]), "expected a PNG, JPEG or WebP image"),
    (v1([{"b64": b64(PNG[:20])}]), "that are none of them (starting b'\\x89PNG"),
    (v1([{"b64": b64(NOISY_PNG[: len(NOISY_PNG) // 2])}]), "expected a complete PNG image, found one that does not decode"),
    (v1([{"b64": b64(encode(Image.new("L", (28, 28)), "GIF"))}]), "expected a PNG, JPEG or WebP image"),
    (v1([{"image": b64(PNG)}]), 'expected {"b64": "<base64 PNG or JPEG>"}'),
    (v1([{"b64": 12}]), "expected a base64 string"),
    (v1([GOOD], parameters={"top_k": 0}), "expected top_k to be an integer from 1 to 10, found 0"),
    (v1([GOOD], parameters={"top_k": "3"}), "expected top_k to be an integer"),
    (v1([GOOD], parameters={"topk": 3}), "unknown parameter(s) ['topk']"),
    (v1([GOOD], instance=1), "unknown field(s) ['instance']"),
]


@pytest.mark.parametrize(("body", "message"), V1_CASES)
def test_malformed_v1_requests_get_400_with_a_clear_message(predictor, body, message):
    response = post(predictor, f"/v1/models/{MODEL}:predict", body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


V2_CASES = [
    (b"{not json", "expected a JSON body, found invalid JSON"),
    (b'{"inputs": [{"name": "images"}]}', "inputs.0.shape: Field required"),
    (orjson.dumps({"inputs": []}), "expected exactly one input tensor"),
    (v2([1, 1, 28, 28], [1.0, 2.0]), "expected 784 FP32 values for shape [1, 1, 28, 28], found 2"),
    (v2([1, 1, 28, 27], [0.0] * 756), "expected \"images\" shaped [N, 1, 28, 28], found [1, 1, 28, 27]"),
    (v2([9, 1, 28, 28], [0.0] * 784 * 9), "expected at most 8 images per request, found 9"),
    (v2([1, 1, 28, 28], [0] * 784, datatype="INT32"), 'expected datatype FP32 for "images", found INT32'),
    (v2([1, 1, 28, 28], [0.0] * 784, name="x"), 'expected an input named "images" (FP32) or "image_bytes" (BYTES), found "x"'),
    (v2([1, 1, 28, 28], [-1.0] * 784), "expected pixel values in 0–255"),
    (v2([1, 1, 28, 28], ["a"] * 784), "found string values"),
    (v2([1], ["@@"], name="image_bytes", datatype="BYTES"), "not base64"),
    (v2([2], [b64(PNG)], name="image_bytes", datatype="BYTES"), "expected 2 encoded images for shape [2], found 1"),
    (v2([1, 28], [b64(PNG)], name="image_bytes", datatype="BYTES"), "expected \"image_bytes\" shaped [N] or [N, 1]"),
    (v2([1, 1, 28, 28], [0.0] * 784, parameters={"top_k": 11}), "expected top_k to be an integer from 1 to 10, found 11"),
    (v2([1, 1, 28, 28], [0.0] * 784, outputs=[{"name": "logits"}]), "expected requested outputs among"),
]


@pytest.mark.parametrize(("body", "message"), V2_CASES)
def test_malformed_v2_requests_get_400_with_a_clear_message(predictor, body, message):
    response = post(predictor, f"/v2/models/{MODEL}/infer", body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def binary(header: dict, raw: bytes, length: int | str | None = None) -> tuple[bytes, dict]:
    head = orjson.dumps(header)
    return head + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head) if length is None else length)}


def fp32_header(shape, size) -> dict:
    return {"inputs": [{"name": "images", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}]}


NAN = np.full((1, 1, 28, 28), np.nan, dtype=np.float32).tobytes()
INF = np.full((1, 1, 28, 28), np.inf, dtype=np.float32).tobytes()
BINARY_CASES = [
    (binary(fp32_header([1, 1, 28, 28], len(NAN)), NAN), "expected finite pixel values, found NaN or infinity"),
    (binary(fp32_header([1, 1, 28, 28], len(INF)), INF), "expected finite pixel values, found NaN or infinity"),
    (binary(fp32_header([1, 1, 28, 28], 3136), b"\0" * 3136, length="xx"), "expected inference-header-content-length to be a byte count"),
    (binary(fp32_header([1, 1, 28, 28], 3136), b"\0" * 3136, length=10**6), "expected inference-header-content-length to be a byte count"),
    (binary({"id": "1"}, b""), "inputs: Field required"),
    (binary(fp32_header([1, 1, 28, 28], 3136), b"\0" * 100), "expected 3136 bytes of binary data, found 100"),
    (binary(fp32_header([1, 1, 28, 28], 3136), b"\0" * 3200), "expected 3136 bytes of binary tensor data after the JSON header, found 3200"),
    (binary(fp32_header([1, 1, 28, 28], 3135), b"\0" * 3135), "expected a multiple of 4 bytes of FP32 data, found 3135"),
    (binary({"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32"}]}, b""), 'expected "data" or a binary_data_size parameter'),
    (binary({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}, b"\xff\0\0\0ab"),
     "expected 255 bytes for BYTES element 0, found 2"),
    (binary({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}, b"\5\0\0\0hello"),
     "expected a PNG, JPEG or WebP image"),
]


@pytest.mark.parametrize(("request_", "message"), BINARY_CASES)
def test_malformed_binary_tensor_requests_get_400_with_a_clear_message(predictor, request_, message):
    body, headers = request_
    response = post(predictor, f"/v2/models/{MODEL}/infer", body, headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(predictor):
    big = b"[" + b"0," * 600_000 + b"0]"  # 1.2 MB; the test server takes 1 MiB
    declared = post(predictor, f"/v1/models/{MODEL}:predict", big)
    streamed = requests.post(f"{predictor}/v1/models/{MODEL}:predict", data=iter([big[:700_000], big[700_000:]]), timeout=30)
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "expected a request body of at most 1048576 bytes" in response.json()["error"]
    assert "Transfer-Encoding" in streamed.request.headers  # really sent without a Content-Length


def test_unknown_model_is_404(predictor):
    for response in (
        post(predictor, "/v2/models/nosuch/infer", v2([1, 1, 28, 28], [0.0] * 784)),
        post(predictor, "/v1/models/nosuch:predict", v1([GOOD])),
        requests.get(f"{predictor}/v2/models/nosuch", timeout=30),
    ):
        assert response.status_code == 404
        assert "nosuch" in response.json()["error"]


def test_endpoints_it_does_not_offer_are_4xx_and_the_model_stays_ready(predictor):
    assert requests.post(f"{predictor}/v2/repository/models/{MODEL}/unload", timeout=30).status_code == 403
    for response in (
        requests.get(f"{predictor}/v2/models/{MODEL}/versions/1/ready", timeout=30),
        requests.get(f"{predictor}/v2/models/{MODEL}?model_version=1", timeout=30),
        post(predictor, f"/v2/models/{MODEL}/infer?model_version=1", v2([1, 1, 28, 28], [0.0] * 784)),
        post(predictor, f"/v1/models/{MODEL}:explain", v1([GOOD])),
    ):
        assert response.status_code == 404 and "serves one version of each model, named in GET /v2/models/NAME" in response.json()["error"]
    unknown_path = requests.get(f"{predictor}/v3/anything", timeout=30)
    assert unknown_path.status_code == 404 and unknown_path.json() == {"error": "Not Found"}
    assert requests.get(f"{predictor}/v2/models/{MODEL}/ready", timeout=30).status_code == 200


@pytest.mark.parametrize("damage", ["tampered", "missing"])
def test_a_damaged_version_never_becomes_ready(tmp_path, damage):
    folder = make_version_folder(tmp_path / "v1")
    if damage == "tampered":
        with open(folder / WEIGHTS_FILE, "r+b") as f:
            f.seek(-4, 2)
            f.write(b"\x00\x01\x02\x03")
    else:
        (folder / METRICS_FILE).unlink()
    proc = start_predictor(str(folder), free_port())
    output = proc.communicate(timeout=90)[0].decode()
    assert proc.returncode == 2
    named = WEIGHTS_FILE if damage == "tampered" else METRICS_FILE
    assert "refusing to serve" in output and named in output
    assert ("SHA-256" if damage == "tampered" else "missing") in output


def test_a_version_that_cannot_load_stops_every_worker_process_with_its_exit_code(tmp_path):
    """With several processes (serving.workers) each refuses the version, and the server exits as one would."""
    proc = start_predictor(str(tmp_path / "never-loaded"), free_port(), "--workers", "2")
    output = proc.communicate(timeout=90)[0].decode()
    assert proc.returncode == 2
    assert "refusing to serve" in output and "stopping the server: a process exited before every process had loaded the model" in output


@pytest.mark.slow
def test_a_large_photo_is_fitted_exactly_as_preparation_fits_training_images(tmp_path):
    from components.modelfile import ModelCard
    from components.presets import FIT
    from tests.conftest import ready_server

    card = ModelCard("small_cnn", 3, 32, 32, ["cat", "dog", "owl"], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    folder = make_version_folder(tmp_path / "rgb", card=card)
    rng = np.random.default_rng(0)
    photo_bytes = encode(Image.fromarray(rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8), "RGB"), "JPEG")
    # What prepare_data would have stored for this file (the predictor must see the same 3x32x32 pixels).
    expected, _ = decode_fit(photo_bytes, 3, 32, 32)
    port, log = free_port(), tmp_path / "server.log"
    proc = start_predictor(str(folder), port, log=log)
    with ready_server(proc, port, log) as url:
        assert model_metadata(url, MODEL)["inputs"][0]["shape"] == [-1, 3, 32, 32]
        reference = v2_probabilities(infer_v2(url, MODEL, expected[None].astype(np.float32)))
        np.testing.assert_allclose(v2_probabilities(infer_v2_images(url, MODEL, [photo_bytes])), reference, atol=1e-6)
        np.testing.assert_allclose(predict_v1_images(url, MODEL, [photo_bytes])[0]["probabilities"], reference[0], atol=1e-5)
    assert json.loads((folder / "model.json").read_text())["preprocess"] == FIT


@pytest.mark.parametrize("pinned", [True, False])
def test_the_load_log_names_the_version_its_manifest_digest_and_the_verified_files(tmp_path, caplog, pinned):
    """The line an operator greps in the predictor pod's log to see what it serves and that it was checked."""
    import logging

    from components.modelfile import MANIFEST_FILE, sha256_file
    from components.registry import pinned_uri
    from serving.model import ImageClassifier

    folder = make_version_folder(tmp_path / "v1")
    digest = sha256_file(folder / MANIFEST_FILE)
    model = ImageClassifier(MODEL, pinned_uri(str(folder), digest) if pinned else str(folder))
    with caplog.at_level(logging.INFO, logger="serving.model"):
        assert model.load()
    model.stop()

    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded")]
    files = len(json.loads((folder / MANIFEST_FILE).read_text())["files"])
    pin = "matches the digest pinned in the model URI" if pinned else "unpinned: the model URI carries no digest"
    assert line.startswith(f"loaded {MODEL} version 1 from {folder}: {MANIFEST_FILE} sha256 {digest} ({pin}), "
                           f"SHA-256 of all {files} files verified against it; small_cnn on ")


def test_a_version_whose_manifest_differs_from_the_pinned_digest_is_refused(tmp_path):
    from components.errors import ModelFormatError
    from components.registry import pinned_uri
    from serving.model import ImageClassifier

    folder = make_version_folder(tmp_path / "v1")
    model = ImageClassifier(MODEL, pinned_uri(str(folder), "0" * 64))

    with pytest.raises(ModelFormatError, match="expected 0{64}"):
        model.load()
    assert not model.ready
