"""A loopback HTTP proxy in front of Azurite that fails on purpose: the transient faults the store must survive.

Each request is either answered with ``503 Server Busy`` without reaching Azurite (``busy``), forwarded and
its response then dropped by closing the connection (``drop``: the request landed, the client never hears
so), forwarded and its response then cut short (``cut``: the status line and headers announce the whole body,
half of it is sent, then the connection is closed; only for requests whose path contains ``cut_path``), or
forwarded normally. Requests are signed with the account key over the path, not the host, so they
stay valid through the proxy.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host"}


@dataclass
class Faults:
    """What the proxy does to the next requests: fail ``busy`` of them with 503, then drop ``drop`` responses,
    then cut ``cut`` responses short (of requests whose path contains ``cut_path``; others are forwarded)."""

    busy: int = 0
    drop: int = 0
    cut: int = 0
    cut_path: str = ""
    seen: list[str] = field(default_factory=list)  # "METHOD outcome" for every request, in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_outcome(self, method: str, path: str = "") -> str:
        with self.lock:
            if self.busy:
                self.busy -= 1
                outcome = "busy"
            elif self.drop:
                self.drop -= 1
                outcome = "drop"
            elif self.cut and self.cut_path in path:
                self.cut -= 1
                outcome = "cut"
            else:
                outcome = "forward"
            self.seen.append(f"{method} {outcome}")
            return outcome


def handler_for(upstream: str, faults: Faults) -> type[BaseHTTPRequestHandler]:
    """A request handler class that forwards to ``upstream`` (``http://HOST:PORT``) with ``faults``."""
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            outcome = faults.next_outcome(self.command, self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if outcome == "busy":
                self._send(503, {"x-ms-error-code": "ServerBusy", "Content-Length": "0"}, b"")
                return
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            connection.close()
            if outcome == "drop":
                self.close_connection = True  # the request landed upstream; the client never hears back
                return
            relayed = {k: v for k, v in response.getheaders() if k.lower() not in HOP_HEADERS | {"content-length"}}
            if outcome == "cut":
                self._send_cut(response.status, relayed, payload)
                return
            # A HEAD answer announces the object's length without a body.
            relayed["Content-Length"] = response.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(payload))
            self._send(response.status, relayed, payload)

        def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            self.send_response_only(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _send_cut(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            # The length of the whole body (at least one byte, so an empty one can be cut too), half of it sent.
            self._send(status, {**headers, "Content-Length": str(max(len(payload), 1))}, payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _relay

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
            pass

    return Handler


@contextmanager
def flaky_proxy(upstream: str) -> Iterator[tuple[int, Faults]]:
    """Run the proxy on a free loopback port in a thread; yield its port and the faults to set."""
    faults = Faults()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(upstream, faults))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], faults
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
