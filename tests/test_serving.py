"""Serving tests: the predictor as a real KServe server process, called over HTTP (v1 and v2)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from components.modelfile import WEIGHTS_FILE
from serving.client import infer_v2, is_ready, model_metadata, predict_v1, v2_classes
from tests.conftest import free_port, make_version_folder

MODEL = "digits"


def start_server(model_uri: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-uri", model_uri, "--model-name", MODEL, "--http-port", str(port),
         "--enable_grpc", "false", "--max-batch", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = make_version_folder(tmp_path_factory.mktemp("served") / "v1")
    port = free_port()
    proc = start_server(str(folder), port)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while not is_ready(url, MODEL):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not become ready:\n{proc.stdout.read()}")
        time.sleep(0.25)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def pixels(n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28)).astype(np.float32)


def test_v1_and_v2_agree_and_return_probabilities(server):
    batch = pixels(3)
    v1 = predict_v1(server, MODEL, batch)
    v2 = infer_v2(server, MODEL, batch)
    assert len(v1) == 3 and all(abs(sum(p["probabilities"]) - 1) < 1e-4 for p in v1)
    assert [p["class"] for p in v1] == v2_classes(v2)
    assert all(p["label"] == str(p["class"]) for p in v1)
    probs = next(o for o in v2["outputs"] if o["name"] == "probabilities")
    assert probs["shape"] == [3, 10] and probs["datatype"] == "FP32"


def test_v1_accepts_hw_instances_for_grayscale(server):
    hw = pixels(1)[0, 0].tolist()
    assert predict_v1(server, MODEL, pixels(1))[0]["class"] == predict_v1_raw(server, {"instances": [hw]}).json()["predictions"][0]["class"]


def test_metadata_describes_the_real_input_and_outputs(server):
    meta = model_metadata(server, MODEL)
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert {o["name"] for o in meta["outputs"]} == {"probabilities", "class"}


def predict_v1_raw(url, body, raw: bytes | None = None):
    return requests.post(f"{url}/v1/models/{MODEL}:predict", json=None if raw else body, data=raw, timeout=30)


def infer_v2_raw(url, body):
    return requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=30)


def v2_body(shape, data, name="images", datatype="FP32"):
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"foo": 1}, 'expected a JSON object with an "instances" list'),
        ({"instances": []}, "non-empty list"),
        ({"instances": [[1, 2, 3]]}, r"expected shape [28, 28] or [1, 28, 28], found [3]"),
        ({"instances": [[[1, 2], [3]]]}, "ragged or non-numeric"),
        ({"instances": [[[300.0] * 28] * 28]}, "expected pixel values in 0–255"),
        ({"instances": [[[1.0] * 28] * 28] * 9}, "at most 8 images"),
    ],
)
def test_malformed_v1_requests_get_400_with_a_clear_message(server, body, message):
    response = predict_v1_raw(server, body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_v1_body_that_is_not_json_gets_400(server):
    response = predict_v1_raw(server, None, raw=b"{not json")
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (v2_body([1, 1, 28, 28], [1.0, 2.0]), "expected 784 FP32 values"),
        (v2_body([1, 1, 28, 27], [0.0] * 756), "expected shape [N, 1, 28, 28], found [1, 1, 28, 27]"),
        (v2_body([1, 1, 28, 28], [0] * 784, datatype="INT32"), "expected datatype FP32, found INT32"),
        (v2_body([1, 1, 28, 28], [0.0] * 784, name="x"), 'expected an input named "images"'),
        (v2_body([1, 1, 28, 28], [-1.0] * 784), "expected pixel values in 0–255"),
        ({"inputs": []}, "expected exactly one input tensor"),
    ],
)
def test_malformed_v2_requests_get_400_with_a_clear_message(server, body, message):
    response = infer_v2_raw(server, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_unknown_model_is_404(server):
    response = requests.post(f"{server}/v2/models/nosuch/infer", json=v2_body([1, 1, 28, 28], [0.0] * 784), timeout=30)
    assert response.status_code == 404


def test_a_tampered_version_never_becomes_ready(tmp_path):
    folder = make_version_folder(tmp_path / "v1")
    with open(folder / WEIGHTS_FILE, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    proc = start_server(str(folder), free_port())
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 2
    assert "refusing to serve" in output and "model.safetensors" in output and "SHA-256" in output
