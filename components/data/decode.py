"""Decoding raw examples, on worker processes when there are many: the CPU half of preparation.

Preparing a data set is two kinds of work. Reading files waits on disks and sockets: threads do it,
tens of requests in flight (:func:`components.parallel.bounded_map`). Decoding is CPU: the JPEG or PNG
decode, the resize and crop of :func:`components.presets.fit_image`, and each image's SHA-256 and
channel sums. Threads alone leave cores idle there (the per-image Python work holds the GIL: measured
1.3 of 2 cores busy), so a data set of at least :data:`PROCESS_MIN_EXAMPLES` examples is decoded by
one worker process per CPU the container may use (:func:`components.cpu.cpu_limit`), :data:`CHUNK`
files per task, while the main process writes the results in order (:class:`Decoder`). Smaller data
sets (the tests' folders) are decoded on the reading threads: starting processes would cost more
than it saves.

The workers are started with ``spawn`` (forking a process that runs SDK and I/O threads can copy a
lock another thread holds) and import neither torch nor the storage SDK, so they start in a fraction
of a second and hold little memory. Each returns what the main process needs and no more: the pixels,
their digest and channel sums, or the :class:`UnreadableFile` that the skip policy decides on.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sys
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice

import numpy as np
from PIL import Image

from components.cpu import cpu_limit
from components.data.sources import Example, Geometry, Payload, UnreadableFile
from components.errors import DataError
from components.imagefile import ImageDecodeError, decode_fit
from components.parallel import bounded_map
from components.presets import fit_image

PROCESS_MIN_EXAMPLES = 2000
CONTENT_MODULUS = 1 << 256
CHUNK = 64  # files per task: one pickle each way per chunk, and the main process's work is per chunk, not per image


@dataclass
class Chunk:
    """The decoded examples of one chunk of files as arrays (what a decode process sends back, in one
    piece), and the files among them that could not be used."""

    indices: np.ndarray  # int64 [K]: the examples' indices in the raw listing
    labels: np.ndarray  # int32 [K]
    pixels: np.ndarray  # uint8 [K, C, H, W]
    sizes: np.ndarray  # int64 [K, 2]: width and height as stored in the raw file
    digests: np.ndarray  # uint8 [K, 32]: the SHA-256 of each image's pixels
    content: int  # this chunk's share of the data set's content hash (components.data.checks.Tally)
    sums: np.ndarray  # float64 [K, 2, C]: per image and channel, the sum of the values and of their squares
    unreadable: list[UnreadableFile]


def decode(payload: Payload | UnreadableFile, geometry: Geometry) -> Example | UnreadableFile:
    """One example decoded to ``geometry``, or the reason its file is unreadable (returned, not raised:
    the policy decides, in order, in the main process). A file of another size than the data set's
    native size raises :class:`DataError`: that is the data set's problem, not the file's."""
    if isinstance(payload, UnreadableFile):
        return payload
    if isinstance(payload.data, np.ndarray):  # an IDX image: uint8 [H, W] grayscale
        raw = payload.data
        pixels = fit_image(Image.fromarray(raw, mode="L"), 1, geometry.height, geometry.width) if geometry.resized else raw[None]
        return Example(payload.index, payload.label, pixels, raw.shape[1], raw.shape[0])
    try:
        data = payload.data if payload.data is not None else _read_file(payload.path)
        pixels, header = decode_fit(data, geometry.channels, geometry.height, geometry.width)
    except ImageDecodeError as exc:
        return UnreadableFile(payload.key, str(exc))
    except OSError as exc:
        return UnreadableFile(payload.key, f"expected a readable file, found an error reading it ({exc.strerror or exc})")
    if not geometry.resized and (header.height, header.width) != (geometry.height, geometry.width):
        raise DataError(f"{payload.key}: expected {geometry.width}x{geometry.height} images like the others when image_size "
                        f"is 0 (native size), found {header.width}x{header.height}: set image_size=S to resize and "
                        "center-crop every image to SxS")
    return Example(payload.index, payload.label, pixels, header.width, header.height)


def decode_many(payloads: list[Payload | UnreadableFile], geometry: Geometry) -> Chunk:
    """:func:`decode` over one chunk, packed as arrays: the task a decode process runs."""
    examples, unreadable = [], []
    for payload in payloads:
        result = decode(payload, geometry)
        (unreadable if isinstance(result, UnreadableFile) else examples).append(result)
    pixels = np.empty((len(examples), *geometry.shape), dtype=np.uint8)
    for row, example in zip(pixels, examples):
        row[...] = example.pixels
    flat = pixels.reshape(len(examples), geometry.channels, -1)
    sums = np.stack([flat.sum(axis=2, dtype=np.float64), np.einsum("kcp,kcp->kc", flat, flat, dtype=np.float64)], axis=1)
    digests = [hashlib.sha256(row.data).digest() for row in pixels]
    return Chunk(indices=np.array([e.index for e in examples], dtype=np.int64),
                 labels=np.array([e.label for e in examples], dtype=np.int32), pixels=pixels,
                 sizes=np.array([(e.width, e.height) for e in examples], dtype=np.int64).reshape(-1, 2),
                 digests=np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32),
                 content=content_share([e.label for e in examples], digests), sums=sums, unreadable=unreadable)


def content_share(labels: list[int], digests: list[bytes]) -> int:
    """The sum modulo 2^256 of each image's SHA-256 of (label, pixel digest): summed over chunks, the same
    images with the same labels give the same content hash in any order. Computed here, on the decode
    processes, so that the main process adds one number per chunk instead of hashing every image."""
    total = 0
    for label, digest in zip(labels, digests):
        total += int.from_bytes(hashlib.sha256(label.to_bytes(4, "little") + digest).digest(), "big")
    return total % CONTENT_MODULUS


class Decoder:
    """Decodes examples for one preparation: on worker processes (one per CPU, started once and shared by
    the splits) when the data set has at least :data:`PROCESS_MIN_EXAMPLES` examples, else on threads.
    Use it as a context manager: leaving it stops the processes."""

    def __init__(self, examples: int, concurrency: int):
        self.concurrency = concurrency
        self.processes = cpu_limit() if examples >= PROCESS_MIN_EXAMPLES else 0
        self._pool: ProcessPoolExecutor | None = None
        if self.processes >= 2:
            self._pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"))
            with _main_module_hidden():  # start them all now: they import while the caller lists and splits
                for _ in range(self.processes):
                    self._pool.submit(int)

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def decoded(self, fetch: Callable[[int], Payload | UnreadableFile], order: Iterable[int], geometry: Geometry,
                threads: bool = True) -> Iterator[Chunk]:
        """Every example of ``order``, fetched and decoded, in order, a chunk at a time. Fetching runs on
        ``concurrency`` threads, unless ``threads`` is false (a local folder: whoever decodes a file reads it)."""
        fetched = bounded_map(lambda i: fetch(int(i)), order, workers=self.concurrency) if threads else map(fetch, order)
        if self._pool is None:
            yield from bounded_map(lambda chunk: decode_many(chunk, geometry), _chunks(fetched, CHUNK), workers=self.concurrency)
            return
        pending: deque[Future[Chunk]] = deque()
        try:
            for chunk in _chunks(fetched, CHUNK):
                pending.append(self._pool.submit(decode_many, chunk, geometry))
                if len(pending) >= 2 * self.processes:  # two chunks per process: none idles while the main process writes
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        finally:
            for future in pending:
                future.cancel()


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Spawn the workers without the parent's ``__main__``. A spawned child first imports the module its
    parent runs as ``__main__`` (multiprocessing's rule, for tasks defined there); in a KFP step that is
    ``kfp.dsl.executor_main``, all of kfp: 0.4 s and 40 MB more per decode process, for nothing, since
    the tasks live in this module. A bare stand-in while the processes start makes them skip it."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _read_file(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk


def _result(future: Future[Chunk]) -> Chunk:
    try:
        return future.result()
    except BrokenProcessPool:
        raise RuntimeError("a decode worker process of data preparation died (killed for memory?); nothing was "
                           "published: prepare again, with more memory or a smaller image_size") from None
