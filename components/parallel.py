"""Bounded concurrency for I/O-bound work: many requests in flight, results in input order, memory capped.

``ThreadPoolExecutor.map`` submits every item at once and keeps every result until it is consumed,
so a slow consumer of a million-file listing would hold a million results. :func:`bounded_map`
keeps at most ``in_flight`` items submitted and not yet consumed: the memory of the pipeline is
``in_flight`` results whatever the number of items. Threads suit this work because what they wait
on (sockets, files, zlib, JPEG and PNG decoding, hashing) releases the GIL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int | None = None) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads, yielding results in input order.

    At most ``in_flight`` (default ``2 × workers``) items are submitted ahead of the consumer. An
    exception from ``fn`` is raised when its result's turn comes; the work still queued is cancelled.
    """
    if workers < 1:
        raise ValueError(f"expected at least 1 worker thread, got {workers}")
    limit = in_flight or 2 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="io") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
