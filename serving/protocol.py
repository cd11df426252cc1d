"""HTTP hardening around KServe's REST server: every client mistake is a 4xx in one error format.

KServe 0.21 answers some malformed requests with a 500 (a bad ``Inference-Header-Content-Length``,
a binary body without ``inputs``, BYTES data that is not UTF-8), others with FastAPI's 422
``{"detail": [...]}``, and accepts bodies of any size. This module, installed on KServe's FastAPI
app before the server starts, makes the server's answers:

- a body over the configured size: 413, checked on ``Content-Length`` and on the bytes received;
- invalid JSON or a body that is not an inference request: 400 ``{"error": "..."}``;
- every v2 body, JSON or the binary tensor extension, parsed strictly (:func:`parse_infer_body`), raw
  BYTES kept as bytes; the inference routes themselves are :mod:`serving.routes`;
- what this server does not offer (explain, paths that name a model version), which KServe answers
  with 501: 404; the model-repository endpoints: 403 (:class:`NotOffered`);
- ``GET /v2/models/NAME`` with the one version served in ``versions`` (KServe leaves it null) and the runtime
  serving it in ``platform`` (``pytorch`` or ``onnxruntime_onnx``; KServe leaves it empty).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import parse_qs

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import InferInput, InferRequest, ModelServer
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput, ModelNotFound
from kserve.logging import KSERVE_LOGGER_NAME
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import RequestedOutput
from kserve.protocol.rest.v2_datamodels import Parameters, RequestOutput
from kserve.utils.numpy_codec import to_np_dtype
from pydantic import BaseModel, StrictInt, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import routes
from serving.codec import BYTES, split_bytes_elements
from serving.http_limits import is_byte_count
from serving.workers import metrics_handler

# -- the body-size limit ------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 before the app reads them.

    A declared ``Content-Length`` is checked up front; a chunked body is counted as it arrives. The body
    is then handed to the app whole (KServe reads it whole anyway). Not FastAPI's own ``max_body_size``:
    for a declared oversize body it replaces every response, ours included, with a plain-text 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and not is_byte_count(declared):
            await send_error(send, 400, f"expected Content-Length to be a number of bytes, found {declared!r}")
            return
        if declared is not None and int(declared) > self.max_bytes:
            await send_error(send, 413, f"expected a request body of at most {self.max_bytes} bytes, found Content-Length {declared}")
            return
        body = await self._read(receive)
        if body is None:
            await send_error(send, 413, f"expected a request body of at most {self.max_bytes} bytes, found more")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it exceeds the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client disconnected: the app will see an empty body
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()  # later calls wait for a disconnect, as the server's own receive does
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


async def send_error(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- error format ------------------------------------------------------------------------------------------


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """pydantic/FastAPI errors as one line: what was expected where."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return "expected a JSON body, found invalid JSON"
    # FastAPI tries the body as InferenceRequest, then as raw bytes: the bytes alternative is noise.
    relevant = [e for e in errors if "bytes" not in e.get("loc", ())[:2]] or errors
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('body', 'InferenceRequest')) or 'body'}: {e.get('msg')}" for e in relevant[:5]]
    return "expected an inference request ({id?, parameters?, inputs: [{name, shape, datatype, data}], outputs?}), found: " + "; ".join(parts)


async def validation_error_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=400, content={"error": describe_validation_errors(list(exc.errors()))})


async def http_error_handler(_: Request, exc: HTTPException) -> JSONResponse:
    # Unknown paths and wrong methods too answer in the protocol's {"error": ...} format.
    return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)


# -- what this server does not offer ------------------------------------------------------------------------------


class NotOffered:
    """ASGI middleware: answer requests for what this server does not offer before KServe sees them.

    KServe answers a model version (``/versions/V/...`` or ``?model_version=V``) and an explanation
    without an explainer with 501, and registers its 501 handler when the server starts, after ours: so
    these are refused here, as 404. The model-repository endpoints would let any caller unload the model
    while the health checks stay green: 403.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = refuse(scope["method"], scope["path"], scope.get("query_string", b"")) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await send_error(send, *refusal)


def refuse(method: str, path: str, query_string: bytes) -> tuple[int, str] | None:
    """The status and message for a request this server does not serve, or None (other methods on these
    paths go on to the router, which answers 405)."""
    offered = ("this server serves one version of each model, named in GET /v2/models/NAME, and is called without it: "
               "/v1/models/NAME:predict and /v2/models/NAME/infer")
    if method not in ("GET", "POST"):
        return None
    if path.startswith("/v2/repository/") and method == "POST":
        return 403, "model repository operations are disabled: this server serves one verified model version"
    if path.startswith("/v2/models/") and ("/versions/" in path or "model_version" in parse_qs(query_string.decode("latin-1"))):
        return 404, f"expected a request without a model version (/versions/V or ?model_version=V), found one for {path}: {offered}"
    if path.startswith("/v1/models/") and path.endswith(":explain") and method == "POST":
        return 404, f"expected a predict request, found an explain request (there is no explainer): {offered}"
    return None


# -- the binary tensor extension --------------------------------------------------------------------------------


class _Input(BaseModel):
    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: Parameters | None = None
    data: list | None = None


class _Header(BaseModel):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[_Input]
    outputs: list[RequestOutput] | None = None


def parse_infer_body(body: bytes, json_length: str | None, model_name: str) -> InferRequest:
    """A v2 request body: a JSON header, then the binary data of the inputs that declare
    ``binary_data_size``. Without an ``Inference-Header-Content-Length`` the body is all JSON."""
    length = _json_length(json_length, len(body))
    header = plain_header(body[:length]) or _validated_header(body[:length])
    inputs, offset = [], length
    for item in header.inputs:
        data, offset = _input_data(item, body, offset)
        inputs.append(InferInput(item.name, item.shape, item.datatype, data=data, parameters=item.parameters))
    if offset != len(body):
        raise InvalidInput(f"expected {offset - length} bytes of binary tensor data after the JSON header, found {len(body) - length}")
    outputs = [RequestedOutput(o.name, o.parameters) for o in header.outputs] if header.outputs else None
    return InferRequest(model_name, inputs, request_id=header.id, parameters=header.parameters, request_outputs=outputs)


def _validated_header(text: bytes) -> _Header:
    try:
        return _Header.model_validate_json(text)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_errors(exc.errors(include_url=False))) from None


_PLAIN_INPUT_KEYS = {"name", "shape", "datatype", "data"}


class PlainInput(NamedTuple):
    """An input as :class:`_Input` has it, for the common request (a tuple: a tenth of ``model_construct``'s cost)."""

    name: str
    shape: list[int]
    datatype: str
    data: list
    parameters: None = None


class PlainHeader(NamedTuple):
    id: str | None
    inputs: list[PlainInput]
    parameters: None = None
    outputs: None = None


def plain_header(text: bytes) -> PlainHeader | None:
    """The header of the common request, built without pydantic's validation (``parse_infer_body`` on a 784-value
    body: 18 us through pydantic, 10 us here, ``benchmarks/request_path.py``): an ``id`` string at most and inputs
    of exactly a string name, a shape of integers, a string datatype, a ``data`` list and no parameters. Anything else (``parameters``, ``outputs``,
    another type anywhere, JSON orjson refuses) is None: :func:`_validated_header` decides, as for every body
    before, so what is accepted and every error message are unchanged."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or not parsed.keys() <= {"id", "inputs"} or not isinstance(parsed.get("id", ""), str):
        return None
    inputs = parsed.get("inputs")
    if not isinstance(inputs, list) or not all(_plain_input(item) for item in inputs):
        return None
    return PlainHeader(parsed.get("id"), [PlainInput(i["name"], i["shape"], i["datatype"], i["data"]) for i in inputs])


def _plain_input(item: Any) -> bool:
    return (isinstance(item, dict) and item.keys() == _PLAIN_INPUT_KEYS and isinstance(item["name"], str)
            and isinstance(item["datatype"], str) and isinstance(item["data"], list) and isinstance(item["shape"], list)
            and all(type(d) is int for d in item["shape"]))


def _json_length(value: str | None, body_length: int) -> int:
    if value is None:
        return body_length
    if not is_byte_count(value.strip()) or int(value) > body_length:
        raise InvalidInput(f"expected {INFERENCE_CONTENT_LENGTH_HEADER} to be a byte count from 0 to {body_length}, found {value!r}")
    return int(value)


def _input_data(item: _Input | PlainInput, body: bytes, offset: int) -> tuple[Any, int]:
    """The input's values (JSON ``data`` or its slice of the binary part) and the next offset."""
    if item.data is not None:
        return item.data, offset
    size = (item.parameters or {}).get("binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f'input "{item.name}": expected "data" or a binary_data_size parameter, found neither')
    chunk = body[offset : offset + size]
    if len(chunk) != size:
        raise InvalidInput(f'input "{item.name}": expected {size} bytes of binary data, found {len(chunk)}')
    return binary_values(chunk, item.datatype, item.name), offset + size


def binary_values(chunk: bytes, datatype: str, name: str) -> Any:
    """Binary tensor data as a flat array (numeric types) or a list of bytes (BYTES, kept raw)."""
    if datatype == BYTES:
        return split_bytes_elements(chunk)
    dtype = to_np_dtype(datatype)
    if dtype is None:
        raise InvalidInput(f'input "{name}": expected a tensor datatype such as FP32 or BYTES, found {datatype!r}')
    itemsize = np.dtype(dtype).itemsize
    if len(chunk) % itemsize:
        raise InvalidInput(f'input "{name}": expected a multiple of {itemsize} bytes of {datatype} data, found {len(chunk)}')
    return np.frombuffer(chunk, dtype=dtype)


@runtime_checkable
class Versioned(Protocol):
    """A model that knows which registry version it serves (:class:`serving.model.ImageClassifier`, which
    imports this module, so it is named by its shape here)."""

    @property
    def version(self) -> str | None: ...


class ValidatingDataPlane(DataPlane):
    """KServe's data plane with :func:`parse_infer_body` for v2 bodies (:mod:`serving.routes` hands
    every REST v2 body over as bytes), and model metadata that names the version served."""

    def decode_inference_request(self, body: Any, headers: dict, model_name: str) -> InferRequest:
        if isinstance(body, bytes):
            return parse_infer_body(body, headers.get(INFERENCE_CONTENT_LENGTH_HEADER), model_name)
        return super().decode_inference_request(body, headers, model_name)

    async def model_metadata(self, model_name: str) -> dict:
        metadata = await super().model_metadata(model_name)  # raises ModelNotFound (404) for an unknown name
        model = self.get_model_from_registry(model_name)
        if isinstance(model, Versioned) and model.version is not None:
            metadata["versions"] = [model.version]
        if platform := getattr(model, "platform", ""):  # the runtime serving it (KServe leaves "platform" empty)
            metadata["platform"] = platform
        return metadata


# -- logging ------------------------------------------------------------------------------------------------------


class ClientErrorsAsWarnings(logging.Filter):
    """KServe's exception handlers log every 400 and 404 at ERROR with a full traceback, so one client
    sending bad requests would fill the logs and page whoever alerts on errors. This filter, on KServe's
    logger, rewrites those records as one WARNING line; server errors keep their tracebacks."""

    CLIENT_ERRORS = (InvalidInput, ModelNotFound)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, self.CLIENT_ERRORS):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg, record.args = "refused a request: %s: %s", (type(error).__name__, error)
            record.exc_info, record.exc_text = None, None
        return True


def install(server: ModelServer, app: FastAPI, max_body_bytes: int) -> ASGIApp:
    """Put the hardening in place; call before ``server.start``. Returns the ASGI app to serve: ``app``
    behind :class:`serving.routes.InferenceFront`, which answers the inference routes itself."""
    server.dataplane = ValidatingDataPlane(model_registry=server.registered_models)
    front = routes.install(app, server.dataplane, max_body_bytes)
    # Before KServe's own /metrics (registered at start): the sum over all processes where there are several.
    app.add_route("/metrics", metrics_handler, methods=["GET"], include_in_schema=False)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_middleware(NotOffered)
    logging.getLogger(KSERVE_LOGGER_NAME).addFilter(ClientErrorsAsWarnings())
    return front
