"""The two inference routes, served as plain Starlette routes in front of KServe's FastAPI ones.

KServe's own handlers for ``POST /v1/models/NAME:predict`` and ``POST /v2/models/NAME/infer`` make the
same data-plane calls as these, wrapped in FastAPI's per-request machinery: route matching over
KServe's ~40 routes, dependency solving, validation of every tensor value against the pydantic
``InferenceRequest`` model, and ``jsonable_encoder`` plus a second validation on the way out. For a
single 28x28 image that machinery costs more event-loop time than decoding, the forward pass and
encoding together (profile of the v2 route under load: about 40% of the loop's busy time). The
routes here are registered first, so they match at once; the v2 body is parsed by
:func:`serving.protocol.parse_infer_body` (strict, one pydantic pass in Rust over the header) and
responses are written with orjson. Everything else is KServe's: the data plane, the model's
``__call__`` with its latency histograms, the exception handlers that turn ``InvalidInput`` into 400
and an unknown model into 404, the middlewares. KServe's routes stay registered behind these, so
``/openapi.json`` still describes the protocol.
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI
from kserve.constants.constants import PredictorProtocol
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.dataplane import DataPlane
from starlette.requests import Request
from starlette.responses import Response

JSON = "application/json"


class InferenceRoutes:
    """``predict`` (v1) and ``infer`` (v2): KServe's handlers, call for call, without FastAPI."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def predict(self, request: Request) -> Response:
        model_name = await self._ready_model(request)
        headers = dict(request.headers)
        try:
            payload, attributes = self.dataplane.decode(body=await request.body(), headers=headers)
        except InvalidInput as exc:  # the data plane raises it only for a body that does not parse
            raise InvalidInput(f"expected a JSON body, found invalid JSON ({exc})") from None
        return await self._answer(model_name, payload, headers, attributes)

    async def infer(self, request: Request) -> Response:
        model_name = await self._ready_model(request)
        headers = dict(request.headers)
        # Bytes go to the data plane's decode_inference_request: serving.protocol.parse_infer_body.
        payload, _ = self.dataplane.decode(await request.body(), headers, PredictorProtocol.REST_V2.value, model_name)
        return await self._answer(model_name, payload, headers, {})

    async def _ready_model(self, request: Request) -> str:
        model_name = request.path_params["model_name"]
        # Raises ModelNotFound (404) for a name this server does not serve.
        if not await self.dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        return model_name

    async def _answer(self, model_name: str, payload: object, headers: dict[str, str], attributes: dict) -> Response:
        result, response_headers = await self.dataplane.infer(model_name=model_name, request=payload, headers=headers)
        body, encoding_headers = self.dataplane.encode(model_name=model_name, response=result, headers=headers, req_attributes=attributes)
        response_headers.update(encoding_headers)
        response_headers.pop("content-length", None)
        media_type = response_headers.pop("content-type", None)
        if isinstance(body, bytes | str):  # the v2 binary tensor extension: a JSON header, then raw outputs
            return Response(body, headers=response_headers, media_type=media_type or "application/octet-stream")
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), headers=response_headers, media_type=media_type or JSON)


def install(app: FastAPI, dataplane: DataPlane) -> None:
    """Register the routes; call before KServe registers its own (``server.start``), so these match first."""
    routes = InferenceRoutes(dataplane)
    app.add_route("/v1/models/{model_name}:predict", routes.predict, methods=["POST"], include_in_schema=False)
    app.add_route("/v2/models/{model_name}/infer", routes.infer, methods=["POST"], include_in_schema=False)
