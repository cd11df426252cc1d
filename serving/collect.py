"""Inference data collection: what the predictor receives and answers, recorded to a store for monitoring.

:meth:`Collector.offer` is called on the request path once the probabilities are known. It only samples
and appends one item per image to a bounded queue (microseconds, never blocks, never raises); when the
queue is full (``queue_size`` records, or ``max_queued_bytes`` of pixels) the images are dropped and
counted. Each time a slice of records (``WRITE_SLICE``) is queued, the event loop turns it into JSON lines
between two rounds of its other work: the per-image statistics
(:func:`components.monitoring.stats.image_stats`) and one line per record. A writer thread wakes every
``flush_interval_s``, or as soon as ``batch_records`` records wait, formats what is left over (fewer than a
slice, or records offered outside an event loop), and writes everything formatted as new JSON-lines objects,
never rewritten::

    collected/MODEL/date=YYYY-MM-DD/hour=HH/WRITER-SEQ.jsonl          one record per image (RECORD_FIELDS)
    collected/MODEL/images/date=YYYY-MM-DD/hour=HH/REQUEST-INDEX-WRITER-SEQ.png   sampled preprocessed images

``WRITER`` is unique per process (host, pid, random), so replicas never write the same key. A store
failure drops that batch's records (counted, one log line) and the writer goes on. :meth:`Collector.close`
writes everything still queued: the predictor calls it when it stops (SIGTERM).

Nothing from the request's headers is recorded: only the pixels after preprocessing, what the image looked
like as sent (size and mode, or a tensor's shape), and the answer.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import random
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from kserve.logging import KSERVE_LOGGER_NAME
from PIL import Image
from prometheus_client import Counter

from components.monitoring.stats import image_stats
from components.store import Store, join_key

# Under KServe's logger: the server configures only that one (and uvicorn's), and an operator must see these lines.
logger = logging.getLogger(f"{KSERVE_LOGGER_NAME}.collect")

COLLECT_PREFIX = "collected"
DEFAULT_QUEUE_SIZE = 10_000  # records; each holds one preprocessed image until written
# Pixels held until written, whatever the model's input size: 10,000 MNIST images are 30 MiB, but 10,000
# float32 3x224x224 images would be 6 GiB; past this budget records are dropped like on a full queue.
DEFAULT_MAX_QUEUED_BYTES = 256 * 2**20
DEFAULT_BATCH_RECORDS = 1_000
DEFAULT_FLUSH_INTERVAL_S = 1.0
WRITE_SLICE = 50  # records turned into JSON lines at a time (a few hundred microseconds)
# The writer thread formats only what the event loop left over, but it shares the server's core and GIL with the
# loop: while it works, requests wait. So it works at most WRITE_DUTY of the time: after each slice it sleeps for
# (1/WRITE_DUTY - 1) times the CPU the slice took (and at least WRITE_PAUSE_S), and a second's records are written
# over some tens of milliseconds, never in one burst that every request answered meanwhile waits behind (p99). Not
# while the queue is half full or the collector is closing: then writing fast matters more than spreading the work.
WRITE_DUTY = 0.05
WRITE_PAUSE_S = 0.002
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")

# In prometheus_client's default registry, which KServe serves on GET /metrics.
RECORDS_WRITTEN = Counter("inference_collect_records", "Collected inference records written to the store", ["model_name"])
RECORDS_DROPPED = Counter("inference_collect_dropped",
                          "Collected inference records dropped: queue full, or the store failed to take their batch", ["model_name"])


@dataclass(frozen=True)
class CollectOptions:
    """What is collected and how it is buffered. ``images_fraction`` of requests also have their images
    saved; those are a subset of the ``fraction`` recorded, so it may not exceed it."""

    fraction: float = 0.1
    images_fraction: float = 0.0
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    batch_records: int = DEFAULT_BATCH_RECORDS
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"expected a collect fraction from 0 to 1, got {self.fraction}")
        if not 0.0 <= self.images_fraction <= self.fraction:
            raise ValueError(f"expected an images fraction from 0 to the collect fraction {self.fraction}, got {self.images_fraction}")
        if self.queue_size < 1 or self.max_queued_bytes < 1 or self.batch_records < 1 or self.flush_interval_s <= 0:
            raise ValueError(f"expected a positive queue size, batch size and flush interval, got {self}")


# Plain slotted records (not frozen): offer() builds them on the event loop for every sampled request, and a
# frozen dataclass sets each field through object.__setattr__ (offer: 5.9 -> 4.6 us per request measured).
@dataclass(slots=True)
class _Request:
    """What the images of one sampled request share."""

    time: float  # seconds since the epoch (time.time(): a tenth of datetime.now's cost on the request path)
    request_id: str
    version: str | None
    labels: Sequence[str]
    save_images: bool


@dataclass(slots=True)
class _Item:
    """One image on the queue: views into the request's arrays, turned into a record by the writer."""

    request: _Request
    index: int
    pixels: np.ndarray  # float32 [C, H, W], 0–255
    probs: np.ndarray  # float [K]
    sent: dict[str, Any] | None


@dataclass(slots=True)
class _Chunk:
    """Records turned into JSON lines, waiting for the writer thread: one partition's, with the images to save."""

    partition: str
    lines: bytes
    count: int
    images: list[tuple[str, np.ndarray]]  # (key, float32 [C,H,W] pixels) of the records that save their image


def writer_id() -> str:
    """Unique per process: two replicas (or a restarted one) never write the same key."""
    host = _SAFE_ID.sub("_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Collector:
    """Samples requests on the request path and writes their records from a background thread."""

    def __init__(self, store: Store, model: str, options: CollectOptions | None = None, seed: int | None = None):
        self.store = store
        self.model = model
        self.options = options or CollectOptions()
        self.writer = writer_id()
        self.written = 0  # records in the store (also RECORDS_WRITTEN); the writer thread adds
        self.dropped = 0  # records lost (also RECORDS_DROPPED); both threads add, under _lock
        self._queued_bytes = 0  # pixels offered and not yet written (or dropped), under _lock
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        # A deque and a timed wake-up, not a queue.Queue: Queue.put wakes a waiting writer on every request,
        # which then takes the GIL from the event loop once per request (measured: the largest collection cost
        # under load). Here the request path wakes the writer once per batch_records records at most.
        self._pending: deque[_Item] = deque()
        # Full slices are turned into lines on the event loop (offer() schedules it): no second thread takes the
        # GIL from the loop for that work. The writer thread formats what is left over (fewer than a slice at a
        # flush, offers made outside an event loop, close), and does every store write.
        self._chunks: deque[_Chunk] = deque()
        self._chunk_records = 0  # records in _chunks, under _lock: the writer is woken early when they are many
        self._format_scheduled = False
        self._chunk_ids = itertools.count(1)
        self._wake = threading.Event()
        self._seq = 0
        self._root_ready = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{model}-collect", daemon=True)
        self._thread.start()

    def describe(self) -> str:
        """The startup line: what is collected, where, and under which writer id."""
        return (f"collecting {self.options.fraction:g} of requests (images of {self.options.images_fraction:g}) to "
                f"{self.store.uri}/{COLLECT_PREFIX}/{self.model}/ as writer {self.writer}")

    # -- the request path ---------------------------------------------------------------------------------

    def offer(self, pixels: np.ndarray, probs: np.ndarray, request_id: str, version: str | None, labels: Sequence[str],
              sent: Sequence[dict[str, Any]] | None = None) -> None:
        """Queue one request's images (``float32 [N,C,H,W]`` on 0–255) and answers (``[N,K]``) if sampled.
        Never blocks and never raises: a problem here must not fail the request it describes."""
        try:
            self._offer(pixels, probs, request_id, version, labels, sent)
        except Exception:  # a bug here is logged, never the request's failure
            logger.exception("collection: could not queue request %s", request_id)

    def _offer(self, pixels: np.ndarray, probs: np.ndarray, request_id: str, version: str | None, labels: Sequence[str],
               sent: Sequence[dict[str, Any]] | None) -> None:
        # One draw per request: recorded below `fraction`, images saved below the smaller `images_fraction`.
        draw = self._rng.random()
        if draw >= self.options.fraction:
            return
        if self._closed:  # the writer has stopped: nothing queued now would be written
            self._count_dropped(len(pixels))
            return
        request = _Request(time.time(), request_id, version, labels, draw < self.options.images_fraction)
        for index in range(len(pixels)):
            item = _Item(request, index, pixels[index], probs[index], sent[index] if sent else None)
            if not self._reserve(item.pixels.nbytes):
                self._count_dropped(len(pixels) - index)
                return
            if len(self._pending) >= self.options.queue_size:
                self._release(item.pixels.nbytes)
                self._count_dropped(len(pixels) - index)
                return
            self._pending.append(item)  # deque.append is atomic: no lock shared with the writer
        if len(self._pending) >= WRITE_SLICE and not self._format_scheduled:
            self._schedule_format()
        if len(self._pending) >= self.options.batch_records and not self._wake.is_set():
            self._wake.set()

    def _schedule_format(self) -> None:
        # asyncio's exported non-raising lookup: None outside an event loop, and then the writer thread formats.
        loop = asyncio._get_running_loop()
        if loop is None:
            return
        self._format_scheduled = True
        loop.call_soon(self._format_on_loop)

    def _format_on_loop(self) -> None:
        """One slice of records turned into lines, between two rounds of the event loop's other work."""
        self._format_scheduled = False
        if self._closed:  # the writer's last drain takes what is queued
            return
        self._add_chunks(self._take(WRITE_SLICE))
        if len(self._pending) >= WRITE_SLICE:
            self._schedule_format()
        if self._chunk_records >= self.options.batch_records and not self._wake.is_set():
            self._wake.set()

    def _reserve(self, nbytes: int) -> bool:
        with self._lock:
            if self._queued_bytes + nbytes > self.options.max_queued_bytes:
                return False
            self._queued_bytes += nbytes
            return True

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._queued_bytes -= nbytes

    # -- shutdown -----------------------------------------------------------------------------------------

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued so far and stop the writer (at most ``timeout_s``; a store that hangs longer
        loses what is left, and the process can still exit: the thread is a daemon)."""
        if self._closed:
            return
        self._closed = True  # read by the writer before its last drain, and by offer() from now on
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            # The store still holds one batch's write; what waits behind it is given up on now (and taken off the
            # queue, so a store that wakes up later cannot write records already counted as lost).
            lost = len(self._take(self.options.queue_size)) + sum(chunk.count for chunk in self._take_chunks())
            self._count_dropped(lost)
            logger.warning("collection: the store did not take the last records within %.0f s; %d queued records are lost", timeout_s, lost)
        else:
            # An offer that passed its closed check as close() began can land after the writer's last drain (and, with
            # close() called off the event loop, a slice the loop was formatting meanwhile).
            self._count_dropped(len(self._take(self.options.queue_size)) + sum(chunk.count for chunk in self._take_chunks()))
        logger.info("collection stopped: %d records written, %d dropped", self.written, self.dropped)

    # -- the writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.options.flush_interval_s)
            self._wake.clear()
            stopping = self._closed  # read before draining: everything offered before close() is in this drain
            while batch := self._take(self.options.batch_records):
                self._add_chunks(batch, paced=True)
                self._write_chunks()
            self._write_chunks()  # what the event loop formatted
            if stopping:
                return

    def _take(self, limit: int) -> list[_Item]:
        """Up to ``limit`` items off the front of the queue (the writer's batch, or close()'s leftovers)."""
        return _popleft(self._pending, limit)

    def _take_chunks(self) -> list[_Chunk]:
        chunks = _popleft(self._chunks, len(self._chunks))
        with self._lock:
            self._chunk_records -= sum(chunk.count for chunk in chunks)
        return chunks

    def _add_chunks(self, items: list[_Item], paced: bool = False) -> None:
        """``items`` turned into JSON lines, a slice per chunk, queued for the writer; their pixels are released
        (those of the images to save travel on with the chunk). ``paced``: on the writer thread, see WRITE_DUTY.
        Never raises: records that cannot be formatted are lost and counted."""
        done = 0
        try:
            for partition, group in _by_partition(items).items():
                for start in range(0, len(group), WRITE_SLICE):
                    began = time.thread_time()
                    chunk = self._chunk(partition, group[start : start + WRITE_SLICE])
                    self._chunks.append(chunk)
                    with self._lock:
                        self._chunk_records += chunk.count
                    done += chunk.count
                    if paced:
                        time.sleep(self._pause(time.thread_time() - began))
        except Exception:  # a bug here must not stop the writer, or raise into the event loop
            self._count_dropped(len(items) - done)
            logger.exception("collection: could not format %d records", len(items) - done)
        finally:
            # The pixels of the images to save stay held, and counted, until the writer has stored them.
            self._release(sum(item.pixels.nbytes for item in items if not item.request.save_images))

    def _write_chunks(self) -> None:
        """Everything formatted so far: one object per partition (after its records' images)."""
        groups: dict[str, list[_Chunk]] = {}
        for chunk in self._take_chunks():
            groups.setdefault(chunk.partition, []).append(chunk)
        for partition, chunks in groups.items():
            count = sum(chunk.count for chunk in chunks)
            try:
                self._write_partition(partition, chunks)
            except Exception as exc:  # any store failure: these records are lost, the writer goes on
                self._count_dropped(count)
                logger.warning("collection: dropped %d records, the store did not take them: %s", count, _one_line(exc))
            else:
                self.written += count
                RECORDS_WRITTEN.labels(self.model).inc(count)
            finally:
                self._release(sum(pixels.nbytes for chunk in chunks for _, pixels in chunk.images))

    def _write_partition(self, partition: str, chunks: list[_Chunk]) -> None:
        if not self._root_ready:  # a Blob container is created on first use, and again after a failure
            self.store.ensure_root()
            self._root_ready = True
        for chunk in chunks:
            for key, pixels in chunk.images:
                self.store.write_bytes(key, png_bytes(pixels))
        self._seq += 1
        name = f"{self.writer}-{self._seq:06d}.jsonl"
        self.store.write_bytes(join_key(COLLECT_PREFIX, self.model, partition, name), b"".join(chunk.lines for chunk in chunks))

    def _pause(self, worked_s: float) -> float:
        """How long to sleep after a slice that took ``worked_s`` of this thread's CPU: see WRITE_DUTY."""
        if self._closed or len(self._pending) > self.options.queue_size // 2:
            return 0.0
        return max(WRITE_PAUSE_S, worked_s * (1 / WRITE_DUTY - 1))

    def _chunk(self, partition: str, items: list[_Item]) -> _Chunk:
        """The JSON lines of ``items``: every number and time computed, rounded and formatted once per slice with
        numpy, so the per-record Python work is one dict and one ``orjson.dumps``."""
        stats = image_stats(np.stack([item.pixels for item in items]))
        probs = np.stack([item.probs for item in items])
        predicted = probs.argmax(axis=1)
        confidence = _rounded(probs[np.arange(len(items)), predicted]).tolist()
        mean, std, hist = _rounded(stats.mean).tolist(), _rounded(stats.std).tolist(), _rounded(stats.hist).tolist()
        times = iso_times(np.array([item.request.time for item in items]))
        token = f"{self.writer}-{next(self._chunk_ids):06d}"  # makes the image keys unique
        lines, images = [], []
        for n, item in enumerate(items):
            request = item.request
            index = int(predicted[n])
            image = self._image_key(partition, token, item) if request.save_images else None
            if image is not None:
                images.append((image, item.pixels))
            lines.append(orjson.dumps({
                # Exactly the fields of RECORD_FIELDS, in order: the contract with the drift report.
                "time": times[n],
                "model": self.model,
                "version": request.version,
                "request_id": request.request_id,
                "index": item.index,
                "sent": item.sent,
                "mean": mean[n],
                "std": std[n],
                "hist": hist[n],
                "predicted": index,
                "label": request.labels[index],
                "confidence": confidence[n],
                "image": image,
            }, option=orjson.OPT_APPEND_NEWLINE))
        return _Chunk(partition, b"".join(lines), len(items), images)

    def _image_key(self, partition: str, token: str, item: _Item) -> str:
        # The request id is the client's (v2): made safe for a key, and made unique by the chunk's token.
        request_id = _SAFE_ID.sub("_", item.request.request_id)[:64]
        return join_key(COLLECT_PREFIX, self.model, "images", partition, f"{request_id}-{item.index}-{token}.png")

    def _count_dropped(self, count: int) -> None:
        with self._lock:
            self.dropped += count
        RECORDS_DROPPED.labels(self.model).inc(count)


def _popleft(queue: deque, limit: int) -> list:
    """Up to ``limit`` items off the front of ``queue``; each popleft is atomic, so another thread may append meanwhile."""
    taken: list = []
    while len(taken) < limit:
        try:
            taken.append(queue.popleft())
        except IndexError:  # empty
            break
    return taken


def png_bytes(pixels: np.ndarray) -> bytes:
    """``[C,H,W]`` pixels on 0–255 (C is 1 or 3) as a PNG file: what the network saw, before normalization."""
    array = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    image = Image.fromarray(array[0], "L") if array.shape[0] == 1 else Image.fromarray(np.moveaxis(array, 0, -1), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def partition_of(moment: datetime) -> str:
    return f"date={moment:%Y-%m-%d}/hour={moment:%H}"


def iso_times(seconds: np.ndarray) -> list[str]:
    """Epoch seconds as ISO 8601 UTC times to the millisecond (``2026-12-07T06:35:17.123+00:00``), all at once."""
    stamps = np.datetime_as_string((seconds * 1000).astype(np.int64).astype("datetime64[ms]"), unit="ms")
    return [f"{stamp}+00:00" for stamp in stamps.tolist()]


def _by_partition(batch: list[_Item]) -> dict[str, list[_Item]]:
    groups: dict[int, list[_Item]] = {}
    for item in batch:  # by the hour since the epoch: one float division per record, a string per partition
        groups.setdefault(int(item.request.time // 3600), []).append(item)
    return {partition_of(datetime.fromtimestamp(hour * 3600, UTC)): items for hour, items in groups.items()}


def _rounded(values: np.ndarray) -> np.ndarray:
    # Six decimals: far finer than any drift score needs, and half the bytes of a full float.
    return np.round(values.astype(np.float64), 6)


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
