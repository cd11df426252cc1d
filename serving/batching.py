"""Dynamic batching: concurrent requests share one forward pass, computed off the event loop.

A forward pass on a batch of 32 costs little more than on one image, so under concurrency the
server is faster when it runs requests together. :class:`Batcher` queues each request's images and
closes a batch when it holds ``max_batch_size`` images, or when no other request is on its way (being
decoded, see :meth:`Batcher.arriving`), or when its oldest request has waited ``max_wait_ms``. So a
lone request never waits, and requests that arrive while a forward pass runs make up the next batch.
The forward pass runs on a single worker thread (the event loop keeps accepting and decoding requests
meanwhile), and every request gets its own rows. With batching off, each request is one forward pass
on the same worker thread.

Each forward pass's size goes to the Prometheus histogram ``inference_batch_size``, which KServe
serves on ``/metrics`` next to its own request latencies; with several server processes
(:mod:`serving.workers`), ``inference_worker_batches_total`` and ``inference_worker_images_total`` say
how each process batches (label ``worker``, the process's index).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter, Histogram

from serving.workers import worker_index

Forward = Callable[[np.ndarray], np.ndarray]
logger = logging.getLogger(__name__)

BATCH_SIZE = Histogram(
    "inference_batch_size",
    "Images per forward pass (dynamic batching coalesces concurrent requests)",
    ["model_name"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
WORKER_BATCHES = Counter("inference_worker_batches", "Forward passes, per server process", ["model_name", "worker"])
WORKER_IMAGES = Counter("inference_worker_images", "Images through forward passes, per server process", ["model_name", "worker"])


@dataclass(frozen=True)
class BatchingOptions:
    enabled: bool = True
    max_batch_size: int = 64
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_wait_ms < 0:
            raise ValueError(f"expected max_batch_size >= 1 and max_wait_ms >= 0, got {self.max_batch_size} and {self.max_wait_ms}")


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future
    arrived: float = field(default=0.0)


class Batcher:
    """Runs ``forward`` (``[N,...] -> [N,K]``) for concurrent callers, batched as ``options`` say."""

    def __init__(self, forward: Forward, options: BatchingOptions, model_name: str):
        self.forward = forward
        self.options = options
        self.model_name = model_name
        # One thread: the model is used by one pass at a time, and the event loop never blocks on it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{model_name}-forward")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._held: _Pending | None = None
        self._arriving = 0
        # Bound once: a labels() lookup per forward pass is a dict and a lock for nothing.
        self._sizes = BATCH_SIZE.labels(model_name)
        self._worker_batches = WORKER_BATCHES.labels(model_name, worker_index())
        self._worker_images = WORKER_IMAGES.labels(model_name, worker_index())

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Wrap a request's decoding: while any request is inside, a batch waits for it (up to ``max_wait_ms``)."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def run(self, images: np.ndarray) -> np.ndarray:
        """The forward pass's rows for ``images``, computed alone or together with other requests."""
        if not self.options.enabled:
            return await self._forward_off_loop([images])
        loop = asyncio.get_running_loop()
        pending = _Pending(images, loop.create_future(), loop.time())
        self._queue_for(loop).put_nowait(pending)
        return await pending.future

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _queue_for(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue[_Pending]:
        # Created lazily: KServe starts its event loop after the model is loaded.
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._serve_batches(), name=f"{self.model_name}-batcher")
            self._worker.add_done_callback(_log_unexpected_exit)
        return self._queue

    async def _forward_off_loop(self, parts: list[np.ndarray]) -> np.ndarray:
        outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._concat_forward, parts)
        self._sizes.observe(len(outputs))
        self._worker_batches.inc()
        self._worker_images.inc(len(outputs))
        return outputs

    def _concat_forward(self, parts: list[np.ndarray]) -> np.ndarray:
        # On the worker thread: the copy into one array costs the event loop nothing.
        return self.forward(parts[0] if len(parts) == 1 else np.concatenate(parts))

    async def _serve_batches(self) -> None:
        while True:
            batch = await self._collect()
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        """One forward pass for ``batch``; each request gets its rows, or the pass's exception."""
        try:
            outputs = await self._forward_off_loop([p.images for p in batch])
        except Exception as exc:  # the pass failed: every request in it gets the error
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        start = 0
        for pending in batch:
            end = start + len(pending.images)
            if not pending.future.done():  # done: the client went away, nothing to deliver
                pending.future.set_result(outputs[start:end])
            start = end

    async def _collect(self) -> list[_Pending]:
        """Requests for one batch: at most ``max_batch_size`` images (a larger request runs alone),
        waiting no longer than ``max_wait_ms`` after the oldest request arrived."""
        loop = asyncio.get_running_loop()
        first = self._held or await self._queue.get()
        self._held = None
        batch, size = [first], len(first.images)
        deadline = first.arrived + self.options.max_wait_ms / 1000
        while size < self.options.max_batch_size:
            nxt = await self._next_before(deadline - loop.time())
            if nxt is None:
                break
            if size + len(nxt.images) > self.options.max_batch_size:
                self._held = nxt  # first in the next batch
                break
            batch.append(nxt)
            size += len(nxt.images)
        return [p for p in batch if not p.future.done()]

    async def _next_before(self, timeout_s: float) -> _Pending | None:
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout_s <= 0 or self._arriving == 0:  # nothing on its way: waiting would only add latency
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None


def _log_unexpected_exit(task: asyncio.Task) -> None:
    # The next request starts a new worker; say why the old one stopped.
    if not task.cancelled() and task.exception() is not None:
        logger.error("batching worker stopped; restarting on the next request", exc_info=task.exception())
