"""KServe's ModelServer, started with this server's network settings.

KServe 0.21 listens on 0.0.0.0 for HTTP and ``[::]`` for gRPC with no option to change either, gives
uvicorn no header limits or request timeout, and serves the model-repository RPCs over gRPC, where
one unauthenticated ``RepositoryModelUnload`` removes the model while the health checks stay green.
:class:`HardenedModelServer` starts the same REST app and gRPC servicer, but:

- on ``listen_address`` (127.0.0.1 unless told otherwise; the cluster's container passes 0.0.0.0);
- HTTP through :func:`serving.http_limits.limited_protocol` (header limits, request timeout, connection cap);
- gRPC only when asked for, with the repository RPCs answered PERMISSION_DENIED (the REST ones are refused
  by :class:`serving.protocol.NotOffered`), and ``ModelMetadata`` with the version served (KServe's drops it).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

from grpc import aio
from grpc_interceptor.exceptions import PermissionDenied
from kserve import ModelServer
from kserve import model_server as kserve_server
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.model import BaseKServeModel
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer
from starlette.types import ASGIApp

from serving import access_log
from serving.http_limits import HttpLimits, limited_protocol

REPOSITORY_DISABLED = "model repository operations are disabled: this server serves one verified model version"


@dataclass(frozen=True)
class NetworkSettings:
    listen_address: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int | None = None  # None: no gRPC server
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    timeout_keep_alive_s: int = 65


class HardenedModelServer(ModelServer):
    """One process, REST (and gRPC when ``settings.grpc_port`` is set), as :class:`NetworkSettings` say."""

    def __init__(self, settings: NetworkSettings, max_asyncio_workers: int, enable_latency_logging: bool = False):
        # KServe's default for latency logging is its own parser's (on): a log line per request, from each model.
        super().__init__(http_port=settings.http_port, grpc_port=settings.grpc_port or 0, workers=1,
                         enable_grpc=settings.grpc_port is not None, max_asyncio_workers=max_asyncio_workers,
                         timeout_keep_alive=settings.timeout_keep_alive_s, enable_latency_logging=enable_latency_logging)
        access_log.make_cheap()  # KServe configured logging just now
        self.settings = settings

    def start(self, models: list[BaseKServeModel], app: ASGIApp | None = None, sockets: list[socket.socket] | None = None) -> None:
        """KServe's ``start`` for one process, with the servers built here. ``app``: the ASGI app to serve
        (default KServe's FastAPI app); ``sockets``: listening sockets made by a supervising parent
        (:mod:`serving.workers`), instead of binding ``listen_address:http_port`` here."""
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = self._build_rest_server(app)
        self.servers.append(self._rest_server.start(sockets))
        if self.enable_grpc:
            self._grpc_server = ListeningGRPCServer(self.settings.listen_address, self.grpc_port, self.dataplane,
                                                    self.model_repository_extension, kwargs=vars(kserve_server.args),
                                                    grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
        with asyncio.Runner(loop_factory=loop_factory(self.event_loop)) as runner:
            # KServe's setup_event_loop configures the current loop, and asyncio.run would start another:
            # its exception handler and thread pool were never those of the loop that serves. This one is.
            asyncio.set_event_loop(runner.get_loop())
            self.setup_event_loop()
            self.register_signal_handler()
            runner.run(self._serve())

    def _build_rest_server(self, app: ASGIApp | None) -> SocketRESTServer:
        rest = SocketRESTServer(FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
                                access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
                                event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
                                ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile)
        # uvicorn reads these when the server loads its config, at start.
        rest.config.host = self.settings.listen_address
        rest.config.http = limited_protocol(self.settings.http_limits)
        if app is not None:
            # KServe's routes and middlewares still go onto its FastAPI app (create_application, at start),
            # which ``app`` wraps.
            rest.config.app = app
        return rest


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop for ``--event-loop uvloop`` where it is installed, else asyncio's. KServe runs its servers
    with ``asyncio.run``, so uvicorn's own choice ("auto": uvloop where installed) never applied, and "auto"
    stays asyncio here: measured on the small CNN at concurrency 64 (one core, three alternated rounds on a
    shared machine), uvloop served fewer requests/s (its C loop holds the GIL the forward thread waits for)
    at no less CPU per request."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            return asyncio.new_event_loop
        return uvloop.new_event_loop
    return asyncio.new_event_loop


class SocketRESTServer(RESTServer):
    """KServe's REST server, serving on sockets it is given when it is given some."""

    async def start(self, sockets: list[socket.socket] | None = None) -> None:  # type: ignore[override]
        self.create_application()
        await self._server.serve(sockets=sockets)


class NoRepositoryServicer(InferenceServicer):
    """The Open Inference Protocol servicer without its model-repository RPCs (they share one gRPC service)."""

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: aio.ServicerContext) -> pb.ModelMetadataResponse:  # noqa: N802
        # KServe's copies every field of the data plane's answer but versions.
        metadata = await self._data_plane.model_metadata(model_name=request.name)
        return pb.ModelMetadataResponse(name=metadata["name"], versions=metadata.get("versions") or [], platform=metadata["platform"],
                                        inputs=metadata["inputs"], outputs=metadata["outputs"])

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: aio.ServicerContext) -> None:  # noqa: N802
        raise PermissionDenied(REPOSITORY_DISABLED)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: aio.ServicerContext) -> None:  # noqa: N802
        raise PermissionDenied(REPOSITORY_DISABLED)


class ListeningGRPCServer(GRPCServer):
    """KServe's gRPC server on a chosen address, with :class:`NoRepositoryServicer`."""

    def __init__(self, host: str, port: int, *args, **kwargs):
        super().__init__(port, *args, **kwargs)
        self._host = host

    async def start(self, max_workers: int) -> None:
        options = [(f"grpc.{name}", self._kwargs.get(f"grpc_{name}")) for name in ("max_send_message_length", "max_receive_message_length")]
        self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                  interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()), options=options)
        servicer = NoRepositoryServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        host = f"[{self._host}]" if ":" in self._host else self._host  # an IPv6 address needs brackets
        self._server.add_insecure_port(f"{host}:{self._port}")
        await self._server.start()
        await self._server.wait_for_termination()
