"""The one Kubernetes layer (:mod:`components.kube`) and the deploy step's adapter on it, against a FAKE API server.

:class:`FakeKServe` is a real HTTP server on loopback that answers the few InferenceService, pod and event
routes the adapter uses, the way the API server does (Status bodies on errors, 409 on a stale
``resourceVersion``). The adapter talks to it through the official ``kubernetes`` client with the ApiClient
that :func:`components.kube.load_api_client` hands out, so serialization, content types and error
translation are the real code.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client as k8s

from components.deploy.kserve_api import KubernetesInferenceServiceApi
from components.kube import ApiError, SystemClock, api_message, load_api_client

NS, NAME = "models", "mnist"
ISVCS = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}


class FakeKServe(BaseHTTPRequestHandler):
    objects: dict[str, dict[str, Any]] = {}
    requests: list[tuple[str, str, str]] = []  # (method, path, content type)

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> dict[str, Any]:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

    def record(self) -> None:
        self.requests.append((self.command, self.path.split("?")[0], self.headers.get("Content-Type", "")))

    def do_GET(self) -> None:
        self.record()
        path = self.path.split("?")[0]
        if path == f"/api/v1/namespaces/{NS}/pods":
            pod = {"metadata": {"name": f"{NAME}-predictor-00001-deployment-1"}, "status": {"phase": "Running"}}
            return self.reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]})
        if path == f"/api/v1/namespaces/{NS}/events":
            events = [{"metadata": {"name": "e1"}, "involvedObject": {"name": f"{NAME}-predictor-00001"}, "reason": "Pulled",
                       "message": "image pulled", "lastTimestamp": "2026-12-02T10:00:00Z"},
                      {"metadata": {"name": "e2"}, "involvedObject": {"name": "other"}, "reason": "x", "message": "y"}]
            return self.reply(200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": events})
        name = path.rsplit("/", 1)[-1]
        if name not in self.objects:
            return self.reply(404, status_body(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found'))
        self.reply(200, self.objects[name])

    def do_POST(self) -> None:
        self.record()
        body = self.body()
        name = body["metadata"]["name"]
        if name in self.objects:
            return self.reply(409, status_body(409, "AlreadyExists", f'inferenceservices.serving.kserve.io "{name}" already exists'))
        body["metadata"]["resourceVersion"] = "1"
        self.objects[name] = body
        self.reply(201, body)

    def do_PATCH(self) -> None:
        self.record()
        patch, live = self.body(), self.objects[self.path.rsplit("/", 1)[-1]]
        if patch.get("metadata", {}).get("resourceVersion") not in (None, live["metadata"]["resourceVersion"]):
            return self.reply(409, status_body(409, "Conflict", "the object has been modified; please apply your changes to the latest version"))
        live["spec"]["predictor"].update(patch.get("spec", {}).get("predictor", {}))
        live["metadata"]["resourceVersion"] = str(int(live["metadata"]["resourceVersion"]) + 1)
        self.reply(200, live)

    def do_DELETE(self) -> None:
        self.record()
        self.objects.pop(self.path.rsplit("/", 1)[-1], None)
        self.reply(200, status_body(200, "", "deleted") | {"status": "Success"})


@pytest.fixture
def api() -> Iterator[KubernetesInferenceServiceApi]:
    FakeKServe.objects, FakeKServe.requests = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKServe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = k8s.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield KubernetesInferenceServiceApi.from_environment(NS, api_client=k8s.ApiClient(configuration))
    finally:
        server.shutdown()
        server.server_close()


def isvc() -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": NAME, "namespace": NS},
            "spec": {"predictor": {"minReplicas": 1}}}


def test_a_missing_service_is_a_404_api_error_with_the_servers_message(api: KubernetesInferenceServiceApi) -> None:
    with pytest.raises(ApiError) as failure:
        api.get(NAME)

    assert (failure.value.status, failure.value.message) == (404, 'inferenceservices.serving.kserve.io "mnist" not found')


def test_create_get_merge_patch_and_delete_go_to_the_inferenceservice_routes(api: KubernetesInferenceServiceApi) -> None:
    api.create(isvc())
    patched = api.patch(NAME, {"metadata": {"resourceVersion": "1"}, "spec": {"predictor": {"canaryTrafficPercent": 10}}})
    api.delete(NAME)

    assert patched["spec"]["predictor"] == {"minReplicas": 1, "canaryTrafficPercent": 10}
    assert FakeKServe.requests[0][:2] == ("POST", ISVCS)
    # A dict body must go as a JSON merge patch: the rollout's patches (null removes a key) are RFC 7386.
    assert FakeKServe.requests[1] == ("PATCH", f"{ISVCS}/{NAME}", "application/merge-patch+json")
    assert FakeKServe.requests[2][:2] == ("DELETE", f"{ISVCS}/{NAME}")


@pytest.mark.parametrize("call", ["create", "stale patch"])
def test_conflicts_are_409_api_errors_the_rollout_retries_on(api: KubernetesInferenceServiceApi, call: str) -> None:
    api.create(isvc())

    with pytest.raises(ApiError) as failure:
        if call == "create":
            api.create(isvc())
        else:
            api.patch(NAME, {"metadata": {"resourceVersion": "0"}, "spec": {}})

    assert failure.value.status == 409


def test_pods_and_events_come_back_as_plain_dicts_only_about_the_service(api: KubernetesInferenceServiceApi) -> None:
    pods, events = api.pods(NAME), api.events(NAME)

    assert [p["metadata"]["name"] for p in pods] == [f"{NAME}-predictor-00001-deployment-1"]
    assert [e["reason"] for e in events] == ["Pulled"]
    assert any(path == f"/api/v1/namespaces/{NS}/pods" for _, path, _ in FakeKServe.requests)


def test_an_explicit_api_client_is_used_as_given() -> None:
    given = object()

    assert load_api_client(given) is given


@pytest.mark.parametrize(("body", "message"), [
    (json.dumps(status_body(403, "Forbidden", "cannot patch inferenceservices")).encode(), "cannot patch inferenceservices"),
    ("upstream connect error", "upstream connect error"),
    (None, ""),
])
def test_api_message_reads_a_status_body_or_keeps_the_text(body: Any, message: str) -> None:
    assert api_message(body) == message


def test_the_system_clock_moves_forward() -> None:
    clock = SystemClock()
    before = clock.monotonic()
    clock.sleep(0.01)

    assert clock.monotonic() > before
