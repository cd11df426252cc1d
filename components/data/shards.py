"""The prepared data format: each split as shards of fixed-size records, listed by an index written last.

A shard is a plain binary file of records, each a little-endian ``int32`` label followed by the image
as ``uint8 [C,H,W]`` pixels, already fitted to the prepared size (:mod:`components.presets`). Why
decoded pixels and not encoded JPEG/PNG: training then spends nothing on decoding (measured by
``benchmarks/data_throughput.py``: reading a record is a memory copy, decoding a small JPEG costs
more than the forward pass of the small CNN on it), a record is found by arithmetic (exact resume,
any shuffle, reads in place from a local file through a memory map), and a reader needs nothing but
numpy. The price is size: 12 KiB per 64×64 RGB image against a few KiB as JPEG. Why not WebDataset
tar, MosaicML MDS or litdata: tar adds a 512-byte header per member (more than a 28×28 digit), and the
other two bring their own Blob credentials and read ``RANK``/``WORLD_SIZE`` as data-parallel ranks,
which in a parameter-server job include the servers; the project's own store already reads Blob with
workload identity, bounded concurrency and SHA-256 checks.

A shard is written to a local scratch file as records arrive and uploaded when full (a bounded number
of uploads in flight), so memory holds no shard. Its SHA-256, size and record count go into the
data set's index (``dataset.json``), which preparation writes after every shard: a folder without it
is incomplete and is never read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.errors import DataError
from components.store import Store, join_key

SHARD_BYTES = 32 * 2**20
UPLOADS_IN_FLIGHT = 2


def record_dtype(shape: list[int]) -> np.dtype:
    """The record of one image: its label, then its pixels."""
    return np.dtype([("label", "<i4"), ("pixels", "u1", tuple(shape))])


def rows_per_shard(shape: list[int], shard_bytes: int) -> int:
    return max(1, shard_bytes // record_dtype(shape).itemsize)


@dataclass(frozen=True)
class ShardInfo:
    key: str  # relative to the data set's prefix
    count: int
    bytes: int
    sha256: str


class ShardWriter:
    """Append records to ``split``'s shards under ``prefix``; uploads run behind, a bounded number at once."""

    def __init__(self, store: Store, prefix: str, split: str, shape: list[int], shard_bytes: int = SHARD_BYTES):
        self.store, self.prefix, self.split = store, prefix, split
        self.dtype = record_dtype(shape)
        self.capacity = rows_per_shard(shape, shard_bytes)
        self.shards: list[ShardInfo] = []
        self._scratch = Path(tempfile.mkdtemp(prefix=f"shards-{split}-"))
        self._uploads = ThreadPoolExecutor(max_workers=UPLOADS_IN_FLIGHT, thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(UPLOADS_IN_FLIGHT + 1)  # shards on local disk at once
        self._pending: list[Future] = []
        self._file = None

    def add(self, labels: np.ndarray, pixels: np.ndarray) -> None:
        """Append ``len(labels)`` records (``pixels`` is ``uint8 [K, C, H, W]``), starting new shards as they fill."""
        records = np.empty(len(labels), dtype=self.dtype)
        records["label"], records["pixels"] = labels, pixels
        start = 0
        while start < len(records):
            if self._file is None:
                self._open()
            take = min(self.capacity - self._count, len(records) - start)
            data = records[start : start + take].tobytes()
            self._file.write(data)
            self._digest.update(data)
            self._count, start = self._count + take, start + take
            if self._count == self.capacity:
                self._finish_shard()

    def close(self) -> list[ShardInfo]:
        """Upload what is left and wait for every upload; return the shards in order."""
        try:
            if self._file is not None:
                self._finish_shard()
            for future in self._pending:
                future.result()
        finally:
            self.abort()
        return list(self.shards)

    def abort(self) -> None:
        """Stop without finishing (a failed preparation): scratch files go; uploaded shards stay unlisted."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._uploads.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _open(self) -> None:
        self._slots.acquire()
        self._path = self._scratch / f"shard-{len(self.shards):05d}.bin"
        self._file = open(self._path, "wb")
        self._digest, self._count = hashlib.sha256(), 0

    def _finish_shard(self) -> None:
        self._file.close()
        self._file = None
        key = join_key(self.split, self._path.name)
        self.shards.append(ShardInfo(key, self._count, self._path.stat().st_size, self._digest.hexdigest()))
        self._pending.append(self._uploads.submit(self._upload, key, self._path))

    def _upload(self, key: str, path: Path) -> None:
        try:
            self.store.move_file(join_key(self.prefix, key), path)  # a local store renames it: no copy
        finally:
            self._slots.release()


class ShardReader:
    """Records of a data set's shards, read in place (local store) or from a bounded local cache (Blob).

    One reader per process. Shards downloaded from Blob are checked against their SHA-256 by the
    store, kept in ``cache_dir`` (shared by the processes of one training worker; at most
    ``keep_files`` there) and memory-mapped; at most ``keep_open`` stay mapped in this process, so
    memory is bounded by a few shards whatever the size of the data set.
    """

    def __init__(self, store: Store, prefix: str, shape: list[int], cache_dir: Path | None = None,
                 keep_open: int = 4, keep_files: int = 16):
        self.store, self.prefix, self.dtype = store, prefix, record_dtype(shape)
        self.cache_dir, self.keep_open, self.keep_files = cache_dir, keep_open, keep_files
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()

    def close(self) -> None:
        self._open.clear()

    def records(self, shard: ShardInfo) -> np.ndarray:
        """The shard's records as a read-only array (a memory map)."""
        if shard.key in self._open:
            self._open.move_to_end(shard.key)
            return self._open[shard.key]
        array = self._map(shard)
        self._open[shard.key] = array
        while len(self._open) > self.keep_open:
            self._open.popitem(last=False)  # the map closes when the last reference goes
        return array

    def _map(self, shard: ShardInfo) -> np.ndarray:
        try:
            path = self._local_file(shard)
            size = path.stat().st_size
        except FileNotFoundError:  # evicted from the cache by another process between the two calls
            path = self._local_file(shard)
            size = path.stat().st_size
        if size != shard.bytes or size != shard.count * self.dtype.itemsize:
            raise DataError(f"{join_key(self.prefix, shard.key)}: expected {shard.count} records of {self.dtype.itemsize} bytes "
                            f"({shard.bytes} bytes) as the index says, found {size} bytes")
        return np.memmap(path, dtype=self.dtype, mode="r", shape=(shard.count,))

    def _local_file(self, shard: ShardInfo) -> Path:
        key = join_key(self.prefix, shard.key)
        in_place = self.store.local_path(key)
        if in_place is not None:
            return in_place
        if self.cache_dir is None:
            raise ValueError(f"expected a cache folder to read {key} from {self.store.uri}")
        return _cached(self.store, key, self.cache_dir / shard.sha256, self.keep_files)


def _cached(store: Store, key: str, path: Path, keep_files: int) -> Path:
    """``path``, downloading ``key`` there first unless another process of this worker already did."""
    import fcntl

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per shard, whichever process asks first
        if not path.is_file():
            tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
            store.download_file(key, tmp)  # verifies the SHA-256 recorded at upload
            os.replace(tmp, path)
            _evict(path.parent, keep_files, keep=path)
    return path


def _evict(folder: Path, keep_files: int, keep: Path) -> None:
    # Oldest first. A process that still maps an evicted file keeps reading it (unlinking does not unmap).
    files = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime_ns)
    for old in files[: max(0, len(files) - keep_files)]:
        if old != keep:
            old.unlink(missing_ok=True)


def iter_records(reader: ShardReader, shards: list[ShardInfo], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every record of ``shards`` in stored order, as ``(pixels uint8 [n,C,H,W], labels int64 [n])`` batches."""
    for shard in shards:
        records = reader.records(shard)
        for start in range(0, shard.count, batch_size):
            chunk = np.asarray(records[start : start + batch_size])
            yield np.ascontiguousarray(chunk["pixels"]), chunk["label"].astype(np.int64)


@contextmanager
def temporary_reader(store: Store, prefix: str, shape: list[int]) -> Iterator[ShardReader]:
    """A :class:`ShardReader` with a cache folder that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="shards-") as tmp:
        reader = ShardReader(store, prefix, shape, Path(tmp))
        try:
            yield reader
        finally:
            reader.close()
