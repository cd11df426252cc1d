"""The two inference routes, served in front of KServe's FastAPI app at the cost of the model, not the stack.

KServe's own handlers for ``POST /v1/models/NAME:predict`` and ``POST /v2/models/NAME/infer`` make the
same data-plane calls as these, wrapped in FastAPI's per-request machinery: route matching over
KServe's ~40 routes, dependency solving, validation of every tensor value against the pydantic
``InferenceRequest`` model, and ``jsonable_encoder`` plus a second validation on the way out. Even as plain
Starlette routes, every request still passed through seven middlewares (KServe's timing middleware, which
reads the process CPU clock twice and formats a log line per request, among them) and three ``send``
wrappers on the way out: under load about a third of the event loop's busy time, more than the model's
forward pass. :class:`InferenceFront` is an ASGI app in front of the whole FastAPI app: it answers the two
inference paths itself (the body limit and the error format are the same as the app's, see
:mod:`serving.protocol`) and passes everything else, and any inference request it does not take (a query
string, a body without a valid ``Content-Length``), to the app. What stays per request: uvicorn's access
log line, KServe's Prometheus latency histograms, and the app's own exception handlers (an ``InvalidInput`` is
a 400, an unknown model a 404). A plain request (a v1 body with an ``instances`` list, or a v2 JSON body of the usual shape: no
parameters, no requested outputs, not a CloudEvent) to a ready model that offers it is answered by the model
itself (:meth:`DirectModel.answer_direct`), without KServe's data plane, ``Model.__call__`` and its
request/response objects: the same answer, errors and stage histograms, at about 12% less server CPU per
request. Every other request goes through KServe's data plane and the model's ``__call__``. v2 JSON answers
are written from the outputs' lists in one orjson call (KServe's ``to_rest`` converts every list to numpy and
back, one ``.item()`` per value); binary outputs and CloudEvents go through KServe's encoder.

The plain Starlette routes stay registered on the app too (registered first, so they match before
KServe's): the requests the front passes on are served by the same code.
"""

from __future__ import annotations

import logging
import re
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np
import orjson
from fastapi import FastAPI
from kserve import InferResponse
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER, PredictorProtocol
from kserve.errors import InvalidInput, ModelNotReady
from kserve.logging import trace_logger
from kserve.protocol.dataplane import DataPlane
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from serving import protocol
from serving.codec import v2_json
from serving.http_limits import is_byte_count

JSON = "application/json"
BYTES = "BYTES"
_NUMERIC = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
_V1 = re.compile(r"/v1/models/([^/]+):predict")
_V2 = re.compile(r"/v2/models/([^/]+)/infer")


class DirectModel(Protocol):
    """A model that answers plain requests itself (:meth:`serving.model.ImageClassifier.answer_direct`)."""

    ready: bool
    enable_latency_logging: bool

    async def answer_direct(self, request: dict | protocol.PlainHeader) -> tuple[dict, dict[str, str]]: ...


class InferenceRoutes:
    """``predict`` (v1) and ``infer`` (v2): KServe's handlers, call for call, without FastAPI."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def predict(self, request: Request) -> Response:
        body, headers = await request.body(), dict(request.headers)
        return _response(*await self.answer_v1(request.path_params["model_name"], body, headers))

    async def infer(self, request: Request) -> Response:
        body, headers = await request.body(), dict(request.headers)
        return _response(*await self.answer_v2(request.path_params["model_name"], body, headers))

    async def answer_v1(self, model_name: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str], str]:
        """The v1 answer's body, headers and media type."""
        direct = self._direct_model(model_name, headers)
        if direct is None:
            await self._check_ready(model_name)
        try:
            payload, attributes = self.dataplane.decode(body=body, headers=headers)
        except InvalidInput as exc:  # the data plane raises it only for a body that does not parse
            raise InvalidInput(f"expected a JSON body, found invalid JSON ({exc})") from None
        if direct is not None and not attributes and isinstance(payload, dict) and isinstance(payload.get("instances"), list):
            answer, response_headers = await direct.answer_direct(payload)
            return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), response_headers, JSON
        return await self._answer(model_name, payload, headers, attributes)

    async def answer_v2(self, model_name: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str], str]:
        direct = self._direct_model(model_name, headers)
        plain = protocol.plain_header(body) if direct is not None and INFERENCE_CONTENT_LENGTH_HEADER not in headers else None
        if plain is not None:
            answer, response_headers = await direct.answer_direct(plain)
            return orjson.dumps(answer), response_headers, JSON
        await self._check_ready(model_name)
        # Bytes go to the data plane's decode_inference_request: serving.protocol.parse_infer_body.
        payload, _ = self.dataplane.decode(body, headers, PredictorProtocol.REST_V2.value, model_name)
        return await self._answer(model_name, payload, headers, {})

    def _direct_model(self, model_name: str, headers: dict[str, str]) -> DirectModel | None:
        """The model to answer this request directly (:meth:`DirectModel.answer_direct`), or None where KServe's
        data plane must: an unknown or not-ready model (its 404/503), a model that does not offer it, KServe's
        per-request latency log line (``--enable_latency_logging``, written by ``Model.__call__``), CloudEvents."""
        model = self.dataplane.model_registry.get_model(model_name)
        if not hasattr(model, "answer_direct") or not model.ready or model.enable_latency_logging or _cloudevent(headers):
            return None
        return model

    async def _check_ready(self, model_name: str) -> None:
        # Raises ModelNotFound (404) for a name this server does not serve.
        if not await self.dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)

    async def _answer(self, model_name: str, payload: object, headers: dict[str, str], attributes: dict) -> tuple[bytes, dict[str, str], str]:
        result, response_headers = await self.dataplane.infer(model_name=model_name, request=payload, headers=headers)
        plain = plain_json(result, headers)
        if plain is not None:
            return orjson.dumps(plain), response_headers, JSON
        binary = plain_binary(result, headers)
        if binary is not None:
            body, json_length = binary
            response_headers[INFERENCE_CONTENT_LENGTH_HEADER] = str(json_length)
            return body, response_headers, "application/octet-stream"
        body, encoding_headers = self.dataplane.encode(model_name=model_name, response=result, headers=headers, req_attributes=attributes)
        response_headers.update(encoding_headers)
        response_headers.pop("content-length", None)
        media_type = response_headers.pop("content-type", None)
        if isinstance(body, bytes | str):  # the v2 binary tensor extension: a JSON header, then raw outputs
            return body if isinstance(body, bytes) else body.encode(), response_headers, media_type or "application/octet-stream"
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), response_headers, media_type or JSON


def plain_json(result: Any, headers: dict[str, str]) -> dict | None:
    """A v2 answer as the dict KServe's ``to_rest`` would make, built from the outputs' data as it is;
    None where KServe's encoder must do it (binary outputs, requested outputs, CloudEvents, v1)."""
    if not _plain(result, headers) or result._use_binary_outputs:
        return None
    return v2_json(result.id, result.model_name, result.model_version, result.outputs)


def plain_binary(result: Any, headers: dict[str, str]) -> tuple[bytes, int] | None:
    """A v2 answer with every output in the binary tensor extension (``binary_data_output``), as KServe's
    ``to_rest`` writes it, and the length of its JSON header: each output's values converted once, in numpy
    (KServe converts each list to numpy, back to a list one ``.item()`` at a time, and to numpy again)."""
    if not _plain(result, headers) or not result._use_binary_outputs:
        return None
    outputs, raws = [], []
    for output in result.outputs:
        raw = _raw_values(output.data, output.datatype)
        if raw is None:
            return None
        outputs.append({"name": output.name, "shape": output.shape, "datatype": output.datatype, "parameters": {"binary_data_size": len(raw)}})
        raws.append(raw)
    header = orjson.dumps({"id": result.id, "model_name": result.model_name, "model_version": result.model_version, "outputs": outputs})
    return b"".join([header, *raws]), len(header)


def _plain(result: Any, headers: dict[str, str]) -> bool:
    """A v2 answer this module encodes itself: all outputs, each a list with no parameters, no response
    parameters, not a CloudEvent."""
    return (isinstance(result, InferResponse) and not result._requested_outputs and not result.parameters and not _cloudevent(headers)
            and all(not o.parameters and isinstance(o.data, list) for o in result.outputs))


def _raw_values(data: list, datatype: str) -> bytes | None:
    """Binary tensor data: little-endian values, or for BYTES each element's UTF-8 with a 4-byte length first."""
    if datatype == BYTES:
        encoded = [str(value).encode() for value in data]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    dtype = _NUMERIC.get(datatype)
    return None if dtype is None else np.asarray(data, dtype=dtype).tobytes()


def _cloudevent(headers: dict[str, str]) -> bool:
    # KServe answers a CloudEvent with one (binary mode: ce-* headers; structured: its content type).
    return headers.get("content-type", "") == "application/cloudevents+json" or any(k.startswith("ce-") for k in headers)


def _response(body: bytes, headers: dict[str, str], media_type: str) -> Response:
    return Response(body, headers=headers, media_type=media_type)


Answer = Callable[[str, bytes, dict[str, str]], Awaitable[tuple[bytes, dict[str, str], str]]]


class InferenceFront:
    """ASGI app: the two inference routes answered directly, everything else by ``app``."""

    def __init__(self, app: FastAPI, routes: InferenceRoutes, max_body_bytes: int):
        self.app = app
        self.routes = routes
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        taken = self._route(scope) if scope["type"] == "http" else None
        if taken is None:
            await self.app(scope, receive, send)
            return
        answer, model_name, length = taken
        body = await _read_body(receive, length)
        if body is None:  # the client went away, or sent another length than it declared: the app decides
            await self.app(scope, _replay(b""), send)
            return
        await self._serve(scope, receive, send, answer, model_name, body)

    def _route(self, scope: Scope) -> tuple[Answer, str, int] | None:
        """The handler, model name and declared body length of a request this front takes, else None:
        a query string (``?model_version=``, refused by the app), no or a bad or too large ``Content-Length``
        (the app's body limit answers those)."""
        if scope["method"] != "POST" or scope.get("query_string"):
            return None
        path = scope["path"]
        match = _V2.fullmatch(path) if path.startswith("/v2/") else _V1.fullmatch(path)
        if match is None:
            return None
        length = _content_length(scope)
        if length is None or length > self.max_body_bytes:
            return None
        answer = self.routes.answer_v2 if path.startswith("/v2/") else self.routes.answer_v1
        return answer, match.group(1), length

    async def _serve(self, scope: Scope, receive: Receive, send: Send, answer: Answer, model_name: str, body: bytes) -> None:
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            content, response_headers, media_type = await answer(model_name, body, headers)
        except Exception as exc:  # noqa: BLE001 - the app's exception handlers decide, as Starlette's middleware would
            await self._handle(scope, exc, send)
            return
        raw = [(b"content-type", media_type.encode()), (b"content-length", str(len(content)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response_headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})
        if trace_logger.isEnabledFor(logging.INFO):  # --enable_latency_logging: the line KServe's timing middleware wrote
            trace_logger.info("kserve.io.%s: wall %.3f ms", scope["path"], 1000 * (time.perf_counter() - started))

    async def _handle(self, scope: Scope, exc: Exception, send: Send) -> None:
        handler = _handler_for(self.app, exc)
        if handler is None:
            raise exc
        response = await handler(Request(scope, _replay(b"")), exc)
        await response(scope, _replay(b""), send)


def _handler_for(app: FastAPI, exc: Exception) -> Callable | None:
    """The app's handler for ``exc``, looked up along its class's MRO as Starlette does (KServe registers
    one for ``Exception``: a 500 with the error's name)."""
    for cls in type(exc).__mro__:
        if cls in app.exception_handlers:
            return app.exception_handlers[cls]
    return None


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if is_byte_count(text) else None
    return None


async def _read_body(receive: Receive, length: int) -> bytes | None:
    """Exactly ``length`` bytes of body, or None (a disconnect, or more or fewer bytes than declared)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > length:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if size == length else None


def _replay(body: bytes) -> Receive:
    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def install(app: FastAPI, dataplane: DataPlane, max_body_bytes: int = 16 * 1024 * 1024) -> InferenceFront:
    """Register the routes (call before KServe registers its own, ``server.start``, so these match first) and
    return the front to serve instead of ``app``."""
    routes = InferenceRoutes(dataplane)
    app.add_route("/v1/models/{model_name}:predict", routes.predict, methods=["POST"], include_in_schema=False)
    app.add_route("/v2/models/{model_name}/infer", routes.infer, methods=["POST"], include_in_schema=False)
    return InferenceFront(app, routes, max_body_bytes)
