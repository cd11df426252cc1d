"""The inference routes (serving.routes): in front of KServe's, and answering like them over real HTTP."""

from __future__ import annotations

import json
import uuid

import numpy as np
import requests
from fastapi import FastAPI
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from starlette.routing import Match

from serving import routes
from tests.conftest import SERVED_MODEL as MODEL


def first_match(app: FastAPI, method: str, path: str):
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"", "headers": []}
    for route in app.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
    raise AssertionError(f"no route serves {method} {path}")


def test_the_inference_routes_match_before_kserves_own():
    """The order of __main__: our routes first, then what KServe's server.start registers."""
    app = FastAPI()
    dataplane = DataPlane(model_registry=ModelRepository())
    routes.install(app, dataplane)
    register_v1_endpoints(app, dataplane, None)
    register_v2_endpoints(app, dataplane, None)
    for path, handler in ((f"/v1/models/{MODEL}:predict", "predict"), (f"/v2/models/{MODEL}/infer", "infer")):
        route = first_match(app, "POST", path)
        endpoint = getattr(route, "endpoint", None)
        assert isinstance(getattr(endpoint, "__self__", None), routes.InferenceRoutes), f"{path} is served by {route!r}"
        assert endpoint.__name__ == handler
    # KServe's routes stay behind ours: the OpenAPI description still documents the protocol.
    assert "/v2/models/{model_name}/infer" in app.openapi()["paths"]


def test_binary_outputs_come_back_as_a_json_header_and_raw_tensors(predictor):
    pixels = np.random.default_rng(3).integers(0, 256, (2, 1, 28, 28)).astype(np.float32)
    body = {"inputs": [{"name": "images", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": pixels.ravel().tolist()}],
            "parameters": {"binary_data_output": True}}
    response = requests.post(f"{predictor}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    offset, tensors = length, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        tensors[output["name"]] = response.content[offset : offset + size]
        offset += size
    assert offset == len(response.content)
    probabilities = np.frombuffer(tensors["probabilities"], dtype=np.float32).reshape(2, -1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.frombuffer(tensors["class"], dtype=np.int64).tolist() == probabilities.argmax(axis=1).tolist()


def test_json_answers_are_json(predictor):
    body = {"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    v2 = requests.post(f"{predictor}/v2/models/{MODEL}/infer", json=body, timeout=30)
    v1 = requests.post(f"{predictor}/v1/models/{MODEL}:predict", json={"instances": [[[0] * 28] * 28]}, timeout=30)
    for response in (v1, v2):
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert [o["name"] for o in v2.json()["outputs"]] == ["probabilities", "class", "label"]
    assert set(v1.json()["predictions"][0]) == {"class", "label", "probabilities"}


def test_client_errors_are_one_warning_line_in_the_server_log(predictor, served_version):
    """KServe would log each 400/404 at ERROR with a traceback; serving.protocol makes it one WARNING."""
    marker = f"nosuch-{uuid.uuid4().hex[:8]}"
    assert requests.post(f"{predictor}/v2/models/{marker}/infer", json={"inputs": []}, timeout=30).status_code == 404
    bad = {"inputs": [{"name": marker, "shape": [1], "datatype": "FP32", "data": [0.0]}]}
    assert requests.post(f"{predictor}/v2/models/{MODEL}/infer", json=bad, timeout=30).status_code == 400
    log = (served_version.parent / "server.log").read_text()
    lines = [line for line in log.splitlines() if marker in line and "HTTP/1.1" not in line]  # not the access log
    assert len(lines) == 2, lines
    assert all("WARNING" in line and "refused a request" in line for line in lines), lines
    assert "Traceback" not in log
