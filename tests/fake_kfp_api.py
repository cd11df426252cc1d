"""A FAKE of the Kubeflow Pipelines v2beta1 REST API, served on loopback for the tests.

This fakes the one boundary we cannot run here: there is no cluster and no KFP backend in the test
environment, so the remote commands are tested by driving the REAL ``kfp.Client`` (and its generated
``kfp_server_api`` HTTP layer) against this small in-memory server and asserting on the requests it receives.

It implements only the endpoints that upload, submit, wait and schedule use, and answers the way the KFP API
server does: JSON with snake_case field names, ``{"error", "code", "message"}`` bodies on errors, 401 without
the expected bearer token, 403 for a namespace the caller may not use, 404 for unknown ids, 409 for duplicate
names, ``display_name`` EQUALS filters and page tokens on list calls. Anything else answers 404 "no route in the
fake", so a test notices when the client starts calling something new. It proves what we send; it does not prove
that a real KFP backend accepts it.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

API = "/apis/v2beta1"
CREATED_AT = "2026-11-21T00:00:00Z"


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def multipart(self) -> dict[str, tuple[str | None, bytes]]:
        """Form fields of a multipart/form-data body: name → (filename, content)."""
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + self.body)
        return {
            part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()
        }


class ApiError(Exception):
    """Raised by a route to answer with a KFP-style error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class FakeKfpApi:
    """In-memory KFP API state plus the requests received. Start with :meth:`start`, stop with :meth:`stop`."""

    token: str | None = None  # when set, every request must carry "Authorization: Bearer <token>"
    allowed_namespaces: set[str] | None = None  # when set, other namespaces get 403
    login_page: bool = False  # answer everything with a 200 HTML page, like an auth proxy's login redirect
    run_states: list[str] = field(default_factory=lambda: ["SUCCEEDED"])  # states of the next created run
    before_request: Callable[[Recorded], None] | None = None  # e.g. to let a concurrent client win a race
    requests: list[Recorded] = field(default_factory=list)
    experiments: dict[str, dict] = field(default_factory=dict)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    _pending_states: dict[str, list[str]] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: Any = field(default_factory=threading.Lock)
    url: str = ""  # set by start()
    _server: ThreadingHTTPServer | None = None

    # --- lifecycle and helpers for tests --------------------------------------------------------------------

    def start(self) -> str:
        """Serve on 127.0.0.1 on a free port; return the base URL."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def add_experiment(self, name: str, namespace: str) -> str:
        experiment_id = self._new_id("exp")
        self.experiments[experiment_id] = {
            "experiment_id": experiment_id, "display_name": name, "namespace": namespace,
            "storage_state": "AVAILABLE", "created_at": CREATED_AT,
        }
        return experiment_id

    def calls(self, method: str, path_pattern: str) -> list[Recorded]:
        """Recorded requests whose method matches and whose path fully matches the regular expression."""
        return [r for r in self.requests if r.method == method and re.fullmatch(path_pattern, r.path)]

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    # --- request handling -----------------------------------------------------------------------------------

    def handle(self, request: Recorded) -> tuple[int, str, bytes]:
        with self._lock:
            self.requests.append(request)
            if self.before_request is not None:
                self.before_request(request)
            if self.login_page:
                return 200, "text/html", b"<html><body>Sign in</body></html>"
            try:
                self._authenticate(request)
                route, match = self._route(request)
                return 200, "application/json", json.dumps(route(request, *match.groups())).encode()
            except ApiError as error:
                body = {"error": str(error), "code": _GRPC_CODES.get(error.status, 2), "message": str(error)}
                return error.status, "application/json", json.dumps(body).encode()

    def _authenticate(self, request: Recorded) -> None:
        if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthenticated: invalid or missing bearer token")
        namespace = request.query.get("namespace")
        if self.allowed_namespaces is not None and namespace and namespace not in self.allowed_namespaces:
            raise ApiError(403, f"PermissionDenied: user is not allowed to access namespace {namespace}")

    def _route(self, request: Recorded) -> tuple[Callable[..., Any], re.Match]:
        routes = [
            ("GET", r"/experiments", self._list_experiments),
            ("POST", r"/experiments", self._create_experiment),
            ("GET", r"/pipelines", self._list_pipelines),
            ("POST", r"/pipelines", self._create_pipeline),
            ("POST", r"/pipelines/upload_version", self._upload_version),
            ("GET", r"/pipelines/([^/]+)/versions", self._list_versions),
            ("POST", r"/runs", self._create_run),
            ("GET", r"/runs/([^/]+)", self._get_run),
            ("GET", r"/recurringruns", self._list_recurring_runs),
            ("POST", r"/recurringruns", self._create_recurring_run),
            ("DELETE", r"/recurringruns/([^/]+)", self._delete_recurring_run),
        ]
        for method, pattern, route in routes:
            match = re.fullmatch(API + pattern, request.path)
            if method == request.method and match:
                return route, match
        raise ApiError(404, f"no route in the fake for {request.method} {request.path}")

    # --- experiments and pipelines --------------------------------------------------------------------------

    def _list_experiments(self, request: Recorded) -> dict:
        namespace = request.query.get("namespace")
        items = [e for e in self.experiments.values() if namespace in (None, e["namespace"])]
        return _page("experiments", _filtered(items, request), request)

    def _create_experiment(self, request: Recorded) -> dict:
        body = request.json()
        if any(_same_name(e, body, "namespace") for e in self.experiments.values()):
            raise ApiError(409, f"AlreadyExists: experiment {body['display_name']}")
        return self.experiments[self.add_experiment(body["display_name"], body.get("namespace", ""))]

    def _list_pipelines(self, request: Recorded) -> dict:
        namespace = request.query.get("namespace")
        items = [p for p in self.pipelines.values() if namespace in (None, p["namespace"])]
        return _page("pipelines", _filtered(items, request), request)

    def _create_pipeline(self, request: Recorded) -> dict:
        body = request.json()
        if any(_same_name(p, body, "namespace") for p in self.pipelines.values()):
            raise ApiError(409, f"AlreadyExists: pipeline {body['display_name']}")
        pipeline_id = self._new_id("pipeline")
        self.pipelines[pipeline_id] = {
            "pipeline_id": pipeline_id, "display_name": body["display_name"], "name": body.get("name"),
            "description": body.get("description"), "namespace": body.get("namespace", ""), "created_at": CREATED_AT,
        }
        return self.pipelines[pipeline_id]

    def _upload_version(self, request: Recorded) -> dict:
        pipeline_id, name = request.query.get("pipelineid"), request.query.get("name")
        if pipeline_id not in self.pipelines:
            raise ApiError(404, f"NotFound: pipeline {pipeline_id}")
        if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
            raise ApiError(409, f"AlreadyExists: pipeline version {name}")
        _, package = request.multipart()["uploadfile"]
        version_id = self._new_id("version")
        self.versions[version_id] = {
            "pipeline_id": pipeline_id, "pipeline_version_id": version_id, "display_name": name, "name": name,
            "description": request.query.get("description"), "created_at": CREATED_AT,
            "pipeline_spec": next(yaml.safe_load_all(package)),
        }
        return self.versions[version_id]

    def _list_versions(self, request: Recorded, pipeline_id: str) -> dict:
        if pipeline_id not in self.pipelines:
            raise ApiError(404, f"NotFound: pipeline {pipeline_id}")
        items = [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
        return _page("pipeline_versions", _filtered(items, request), request)

    # --- runs and recurring runs ----------------------------------------------------------------------------

    def _check_run_target(self, body: dict) -> None:
        if body.get("experiment_id") not in self.experiments:
            raise ApiError(404, f"NotFound: experiment {body.get('experiment_id')}")
        reference = body.get("pipeline_version_reference")
        if reference is None and "pipeline_spec" not in body:
            raise ApiError(400, "InvalidArgument: a run needs a pipeline_spec or a pipeline_version_reference")
        if reference is not None and reference.get("pipeline_version_id") not in self.versions:
            raise ApiError(404, f"NotFound: pipeline version {reference.get('pipeline_version_id')}")

    def _create_run(self, request: Recorded) -> dict:
        body = request.json()
        self._check_run_target(body)
        run_id = self._new_id("run")
        states = list(self.run_states)
        self.runs[run_id] = {**body, "run_id": run_id, "state": states[0], "created_at": CREATED_AT}
        self._pending_states[run_id] = states
        return self.runs[run_id]

    def _get_run(self, request: Recorded, run_id: str) -> dict:
        if run_id not in self.runs:
            raise ApiError(404, f"NotFound: run {run_id}")
        states = self._pending_states[run_id]
        self.runs[run_id]["state"] = states.pop(0) if len(states) > 1 else states[0]
        return self.runs[run_id]

    def _list_recurring_runs(self, request: Recorded) -> dict:
        experiment_id = request.query.get("experiment_id")
        items = [r for r in self.recurring_runs.values() if experiment_id in (None, r["experiment_id"])]
        # The one camelCase list key of the v2beta1 API (json_name in the proto; the generated client expects it).
        return _page("recurringRuns", _filtered(items, request), request)

    def _create_recurring_run(self, request: Recorded) -> dict:
        body = request.json()
        self._check_run_target(body)
        recurring_run_id = self._new_id("recurring")
        namespace = self.experiments[body["experiment_id"]]["namespace"]  # taken from the experiment
        self.recurring_runs[recurring_run_id] = {
            **body, "recurring_run_id": recurring_run_id, "namespace": namespace, "status": "ENABLED",
            "max_concurrency": str(body.get("max_concurrency", 1)),  # int64: a JSON string on the wire
            "service_account": body.get("service_account") or "default-editor", "created_at": CREATED_AT,
        }
        return self.recurring_runs[recurring_run_id]

    def _delete_recurring_run(self, request: Recorded, recurring_run_id: str) -> dict:
        if self.recurring_runs.pop(recurring_run_id, None) is None:
            raise ApiError(404, f"NotFound: recurring run {recurring_run_id}")
        return {}


_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6}


def _same_name(item: dict, body: dict, scope: str) -> bool:
    return item["display_name"] == body.get("display_name") and item.get(scope, "") == body.get(scope, "")


def _filtered(items: list[dict], request: Recorded) -> list[dict]:
    """Apply a ``filter`` query parameter; only ``display_name`` EQUALS predicates are supported."""
    if "filter" not in request.query:
        return items
    for predicate in json.loads(request.query["filter"])["predicates"]:
        if predicate.get("key") != "display_name" or predicate.get("operation") not in ("EQUALS", 1):
            raise ApiError(400, f"InvalidArgument: the fake supports display_name EQUALS only, got {predicate}")
        items = [item for item in items if item["display_name"] == predicate["stringValue"]]
    return items


def _page(key: str, items: list[dict], request: Recorded) -> dict:
    start = int(request.query.get("page_token") or 0)
    size = int(request.query.get("page_size") or 10)
    end = start + size
    next_token = str(end) if end < len(items) else ""
    return {key: items[start:end], "total_size": len(items), "next_page_token": next_token}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKfpApi

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Recorded(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length),
        )
        status, content_type, body = self.fake.handle(request)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass
