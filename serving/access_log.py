"""The access log line per request, at a fraction of its cost.

uvicorn logs one line per request on ``uvicorn.access``, formatted by KServe's logging configuration with
uvicorn's ``AccessFormatter``: a ``strftime`` per line, an ``HTTPStatus`` enum lookup for the reason phrase,
colour handling, four dictionary-driven ``%`` formats, then a write and a flush (a system call) per line.
Under load that was a fifth of the event loop's busy time, more than decoding the request. With KServe's
default handler in place, :func:`make_cheap` swaps in :class:`AccessLineFormatter` (the same line, one
f-string, the timestamp formatted once a second) and :class:`BatchedStreamHandler` (the same stream, flushed
at most every :data:`FLUSH_INTERVAL_S`, and by a background thread when the server goes idle). An operator's
own logging configuration (``--log_config_file``) is left alone.

Where that handler is the access logger's only one (no filters, no propagation), :func:`direct_logger` gives
uvicorn's protocol (:mod:`serving.http_limits`) an access logger whose ``info`` writes the same line through
it without a ``LogRecord``: the logging machinery around the line cost as much as formatting it.
"""

from __future__ import annotations

import http
import logging
import os
import threading
import time
from typing import Any

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
        return self.line(args, record.created, record.name, record.levelname, record.process)

    def line(self, args: tuple, created: float, name: str = ACCESS_LOGGER, level: str = "INFO", process: int | None = None) -> str:
        """The line for uvicorn's five arguments (client, method, path, HTTP version, status)."""
        client, method, path, version, status = args
        second = int(created)
        if second != self._second:  # strftime once a second, not once a line
            self._second, self._stamp = second, time.strftime(self.datefmt or "%Y-%m-%d %H:%M:%S", time.localtime(second))
        msecs = int((created - second) * 1000)  # as logging.LogRecord computes it
        return (f'{self._stamp}.{msecs:03d} {name} {f"{level}:".ljust(9)} {client} {process} - '
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

    def write_line(self, line: str) -> None:
        """``line`` as ``emit`` would write a record's formatted text (under the handler's lock; flushed as above)."""
        with self.lock:
            self.stream.write(line + self.terminator)
            self.flush()

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


class DirectAccessLogger:
    """What uvicorn's protocol calls per request, ``access_logger.info(msg, client, method, path, version,
    status)``, written straight through the cheap handler; the logger's level still decides (and ``disabled``).
    Anything else uvicorn asks of its logger goes to the logger itself."""

    def __init__(self, logger: logging.Logger, handler: BatchedStreamHandler):
        self.logger = logger
        self.handler = handler
        self.process = os.getpid()

    def info(self, msg: str, *args: Any) -> None:
        if not self.logger.isEnabledFor(logging.INFO) or self.handler.level > logging.INFO:
            return
        if len(args) != 5:  # not the access line: the logging machinery writes it
            self.logger.info(msg, *args)
            return
        self.handler.write_line(self.handler.formatter.line(args, time.time(), process=self.process))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)


def direct_logger() -> DirectAccessLogger | None:
    """A :class:`DirectAccessLogger` where ``make_cheap`` put its handler in and nothing else would see the
    record (no other handler, no filter, no propagation to a parent); else None: keep the logging machinery."""
    access = logging.getLogger(ACCESS_LOGGER)
    if len(access.handlers) != 1 or access.filters or access.propagate:
        return None
    handler = access.handlers[0]
    if not isinstance(handler, BatchedStreamHandler) or handler.filters or not isinstance(handler.formatter, AccessLineFormatter):
        return None
    return DirectAccessLogger(access, handler)
