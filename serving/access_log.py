"""The access log line per request, at a fraction of its cost.

uvicorn logs one line per request on ``uvicorn.access``, formatted by KServe's logging configuration with
uvicorn's ``AccessFormatter``: a ``strftime`` per line, an ``HTTPStatus`` enum lookup for the reason phrase,
colour handling, four dictionary-driven ``%`` formats, then a write and a flush (a system call) per line.
Under load that was a fifth of the event loop's busy time, more than decoding the request. With KServe's
default handler in place, :func:`make_cheap` swaps in :class:`AccessLineFormatter` (the same line, one
f-string, the timestamp formatted once a second) and :class:`BatchedStreamHandler` (the same stream, flushed
at most every :data:`FLUSH_INTERVAL_S`, and by a background thread when the server goes idle). An operator's
own logging configuration (``--log_config_file``) is left alone.
"""

from __future__ import annotations

import http
import logging
import threading
import time

from uvicorn.logging import AccessFormatter

ACCESS_LOGGER = "uvicorn.access"
FLUSH_INTERVAL_S = 0.2
_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}


class AccessLineFormatter(logging.Formatter):
    """KServe's access line (``DATE TIME.MS uvicorn.access INFO:     CLIENT PID - "REQUEST LINE" STATUS PHRASE``)
    written directly from uvicorn's five arguments; any other record as ``fallback`` formats it."""

    def __init__(self, fallback: logging.Formatter):
        super().__init__(datefmt=fallback.datefmt)
        self.fallback = fallback
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5 or record.exc_info:
            return self.fallback.format(record)
        client, method, path, version, status = args
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._second, self._stamp = second, time.strftime(self.datefmt or "%Y-%m-%d %H:%M:%S", time.localtime(second))
        level = f"{record.levelname}:".ljust(9)
        return (f'{self._stamp}.{int(record.msecs):03d} {record.name} {level} {client} {record.process} - '
                f'"{method} {path} HTTP/{version}" {status} {_PHRASES.get(status, "")}')


class BatchedStreamHandler(logging.StreamHandler):
    """A ``StreamHandler`` that flushes at most every ``interval_s`` on the request path; a daemon thread
    flushes what is left when no request comes to do it."""

    def __init__(self, stream, interval_s: float = FLUSH_INTERVAL_S):  # noqa: ANN001 - any text stream
        super().__init__(stream)
        self.interval_s = interval_s
        self._flushed = time.monotonic()
        self._dirty = False
        threading.Thread(target=self._flush_idle, name="access-log-flush", daemon=True).start()

    def flush(self) -> None:
        if time.monotonic() - self._flushed < self.interval_s:
            self._dirty = True
            return
        self.flush_now()

    def flush_now(self) -> None:
        self._flushed, self._dirty = time.monotonic(), False
        super().flush()

    def close(self) -> None:
        # logging.shutdown flushes then closes each handler: nothing written may stay behind the interval.
        self.flush_now()
        super().close()

    def _flush_idle(self) -> None:
        while True:
            time.sleep(self.interval_s)
            if self._dirty:
                self.flush_now()


def make_cheap() -> bool:
    """Swap the cheap formatter and handler in where ``uvicorn.access`` has KServe's default handler (a plain
    ``StreamHandler`` with uvicorn's ``AccessFormatter``); True if it did."""
    access = logging.getLogger(ACCESS_LOGGER)
    for i, handler in enumerate(access.handlers):
        if type(handler) is logging.StreamHandler and isinstance(handler.formatter, AccessFormatter):
            cheap = BatchedStreamHandler(handler.stream)
            cheap.setFormatter(AccessLineFormatter(handler.formatter))
            cheap.setLevel(handler.level)
            access.handlers[i] = cheap
            return True
    return False
