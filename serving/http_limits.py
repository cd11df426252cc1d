"""HTTP/1.1 limits in the connection itself: header size and count, and time to send a whole request.

uvicorn's httptools protocol (the fast one, and what uvicorn picks when httptools is installed) has
no header limits at all (h11's ``h11_max_incomplete_event_size`` does not apply to it), and no timer
while a request is being received: a 64 MiB header is buffered whole, and a connection that sends
half a request is held open forever. :func:`limited_protocol` returns uvicorn's protocol with:

- request headers (request line and every header) of at most ``max_header_bytes``: 431. A header still
  arriving is counted on the raw bytes, so a never-ending header is cut off after the limit, not buffered;
- at most ``max_headers`` headers: 431;
- a request whose headers and body have not all arrived ``request_timeout_s`` after its first byte: 408;
- a connection that sends nothing at all: closed after the keep-alive timeout, as between requests;
- a request arriving while ``max_connections`` connections are open or requests in progress: 503
  (uvicorn's own ``limit_concurrency`` answers a plain-text 503 that says nothing).

Every refusal is one JSON line, ``{"error": "..."}``, and closes the connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving import access_log

DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # Envoy's own default is 60 KiB: nothing the mesh forwards is refused
DEFAULT_MAX_HEADERS = 100  # Envoy's default too
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# A 2-CPU predictor is saturated long before this; beyond it each connection is memory (a body up to the
# body limit), so more waiting requests only push the pod towards its memory limit.
DEFAULT_MAX_CONNECTIONS = 128
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if min(self.max_header_bytes, self.max_headers, self.max_connections) < 1 or not self.request_timeout_s > 0:
            raise ValueError(f"expected positive HTTP limits, found {self}")


def is_byte_count(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts digits such as "²" that ``int()`` refuses."""
    return text.isascii() and text.isdigit()


def limited_protocol(limits: HttpLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits`` (pass as ``uvicorn.Config(http=...)``)."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimits] = HttpLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.access_logger = access_log.direct_logger() or self.access_logger  # the same line, written directly
        self._raw_header_bytes = self._header_bytes = self._header_count = 0
        self._headers_done = False
        self._refused = False
        self._request_timer: asyncio.TimerHandle | None = None
        # Idle from the start: the same timer uvicorn arms between requests (it arms none before the first).
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._headers_done:
            self._raw_header_bytes += len(data)
        super().data_received(data)
        if not self._refused and not self._headers_done and self._raw_header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"expected request headers of at most {self.limits.max_header_bytes} bytes, found more")

    # Parser callbacks -------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_count = 0
        self._cancel_request_timer()
        self._request_timer = self.loop.call_later(self.limits.request_timeout_s, self._request_timed_out)

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > self.limits.max_headers:
            self._refuse(431, f"expected at most {self.limits.max_headers} request headers, found more")
        elif self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"expected request headers of at most {self.limits.max_header_bytes} bytes, found more")
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._headers_done, self._raw_header_bytes = True, 0
        busy = max(len(self.connections), len(self.tasks) + 1)  # this connection is counted, its request not yet
        if not self._refused and busy > self.limits.max_connections:
            self._refuse(503, f"expected at most {self.limits.max_connections} connections or requests in progress, found {busy}: retry later")
        if not self._refused:  # a refused request never reaches the app
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_request_timer()
        self._headers_done = False  # what arrives next belongs to the next request's headers
        if not self._refused:
            super().on_message_complete()

    # Refusals ---------------------------------------------------------------------------------------

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self.cycle is not None and self._headers_done and self.cycle.response_started:
            self.transport.close()  # the app already answers (e.g. 413 before reading the body): just stop
        else:
            self._refuse(408, f"expected the whole request within {self.limits.request_timeout_s:g} s, found it unfinished")

    def _refuse(self, status: int, message: str) -> None:
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._cancel_request_timer()
        body = orjson.dumps({"error": message})
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                % (status, _REASONS[status], len(body)))
        self.transport.write(head + body)
        self.transport.close()
        self.logger.warning("refused a connection from %s: %s", self.client, message)

    def _cancel_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
