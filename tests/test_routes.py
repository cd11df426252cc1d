"""The inference routes (serving.routes): in front of KServe's, and answering like them over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid

import numpy as np
import orjson
import requests
from fastapi import FastAPI
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from PIL import Image
from prometheus_client import REGISTRY
from starlette.routing import Match

from serving import routes
from serving.batching import Batcher
from serving.model import ImageClassifier
from serving.protocol import ValidatingDataPlane
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


# -- the direct path: answered without KServe's data plane, as the data plane answers ---------------------------


def _pixels(count: int = 1, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 256, count * 784).tolist()


def _png_base64() -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8), "L").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _v2(data: list, shape: list, **fields) -> dict:
    return {**fields, "inputs": [{"name": "images", "shape": shape, "datatype": fields.pop("datatype", "FP32"), "data": data}]}


V2_BODIES = [
    _v2(_pixels(), [1, 1, 28, 28], id="r-1"),
    _v2(_pixels(2), [2, 1, 28, 28]),  # no id: each path makes one up
    {"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "fp32", "data": _pixels()}]},  # KServe upper-cases it
    {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [_png_base64()]}]},
    _v2(_pixels(), [1, 1, 28, 28], parameters={"top_k": 3}),  # not plain: the data plane on both
    _v2([300] * 784, [1, 1, 28, 28]),
    _v2([True] * 784, [1, 1, 28, 28]),
    _v2(["1"] * 784, [1, 1, 28, 28]),
    _v2(_pixels(), [1, 28, 28]),
    {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": _pixels()}]},
    {"inputs": []},
    {"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "INT8", "data": _pixels()}]},
]
V1_BODIES = [
    {"instances": [np.reshape(_pixels(), (28, 28)).tolist()]},
    {"instances": [{"b64": _png_base64()}], "parameters": {"top_k": 2}},
    {"instances": [[[300] * 28] * 28]},
    {"instances": [[[0] * 27] * 28]},
    {"instances": "not a list"},  # not plain: the data plane on both
    {"instances": []},
    [1, 2, 3],
]


def _answers(routes_: routes.InferenceRoutes, bodies: list[tuple[str, bytes]]) -> list[tuple]:
    """What the routes answer for each body, in one event loop (the batcher's)."""

    async def answer_all() -> list[tuple]:
        return [await _answer(routes_, version, body) for version, body in bodies]

    return asyncio.run(answer_all())


async def _answer(routes_: routes.InferenceRoutes, protocol_version: str, body: bytes) -> tuple:
    """What the route answers for ``body``: the body (a made-up id blanked), headers and media type, or the error."""
    answer = routes_.answer_v2 if protocol_version == "v2" else routes_.answer_v1
    try:
        content, headers, media_type = await answer(MODEL, body, {"content-type": "application/json"})
    except Exception as exc:  # noqa: BLE001 - the error is the outcome compared
        return type(exc).__name__, str(exc)
    parsed = json.loads(content)
    if isinstance(parsed, dict) and parsed.get("id", "r-1") != "r-1":
        parsed["id"] = "made up"
    return parsed, headers, media_type


def _stage_counts() -> list[float]:
    return [REGISTRY.get_sample_value(f"request_{stage}_seconds_count", {"model_name": MODEL}) or 0.0
            for stage in ("preprocess", "predict", "postprocess")]


def test_the_direct_path_answers_every_request_as_kserves_data_plane_does(served_version, monkeypatch):
    """InferenceRoutes answers plain requests through ImageClassifier.answer_direct: each body here gets the same
    answer (or the same error) with it and through KServe's DataPlane.infer and Model.__call__, and the same
    stage histograms count it."""
    model = ImageClassifier(MODEL, str(served_version), threads=1)
    model.load()
    repository = ModelRepository()
    repository.update(model)
    routes_ = routes.InferenceRoutes(ValidatingDataPlane(model_registry=repository))
    bodies = [("v2", orjson.dumps(b)) for b in V2_BODIES] + [("v1", orjson.dumps(b)) for b in V1_BODIES]
    before = _stage_counts()
    direct = _answers(routes_, bodies)
    counted = [after - b for after, b in zip(_stage_counts(), before, strict=True)]
    monkeypatch.setattr(routes.InferenceRoutes, "_direct_model", lambda self, name, headers: None)
    model.batcher = Batcher(model.forward, model.batching, MODEL)  # the first one is bound to the first loop
    before = _stage_counts()
    assert _answers(routes_, bodies) == direct
    assert [after - b for after, b in zip(_stage_counts(), before, strict=True)] == counted
    answered = [a for a in direct if len(a) == 3]
    assert len(answered) == 7 and all(a[1] == {"x-model-version": "1"} for a in answered)
    assert counted[2] == 7 and counted[0] == counted[1] > 7  # postprocess: the answered; the others: refusals too
    assert {a[0] for a in direct if len(a) == 2} == {"InvalidInput"}  # and the refusals are refusals
    model.stop()


def test_the_direct_path_is_not_taken_where_kserves_data_plane_must_answer(served_version):
    model = ImageClassifier(MODEL, str(served_version), threads=1)
    repository = ModelRepository()
    repository.update(model)
    routes_ = routes.InferenceRoutes(ValidatingDataPlane(model_registry=repository))
    json_headers = {"content-type": "application/json"}
    assert routes_._direct_model(MODEL, json_headers) is None  # not loaded: not ready (KServe answers 503)
    model.load()
    assert routes_._direct_model(MODEL, json_headers) is model
    assert routes_._direct_model("nosuch", json_headers) is None  # KServe answers 404
    assert routes_._direct_model(MODEL, {"ce-id": "1", **json_headers}) is None  # a binary CloudEvent
    assert routes_._direct_model(MODEL, {"content-type": "application/cloudevents+json"}) is None
    model.enable_latency_logging = True  # Model.__call__ writes the latency line
    assert routes_._direct_model(MODEL, json_headers) is None
    model.stop()
