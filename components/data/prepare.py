"""Prepare a raw data set for training: validate, split deterministically, write shards, streaming.

The prepared data set is a folder in the store, ``prepared/<digest>/``: each split as shards of
fixed-size records (:mod:`components.data.shards`) and ``dataset.json``, the index, written last. A
folder without ``dataset.json`` is incomplete: it is cleared and rewritten, never read. The digest
covers the raw listing (every file's key, size and version: the Blob ETag, or a local file's
modification time) and the preparation settings, so preparing the same data the same way twice
reuses the folder without reading an image.

Memory does not grow with the data set: the split is decided from the labels alone (the class
folders of the listing, or the IDX label files), images are read on a bounded pool of threads and
decoded on worker processes (:mod:`components.data.decode`) in split order, each goes straight into a
shard on local disk, and what is learnt about the data (:class:`components.data.checks.Tally`) is
counters and 12 bytes per image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from components.data.checks import SPLITS, Tally
from components.data.decode import Chunk, Decoder
from components.data.shards import SHARD_BYTES, ShardInfo, ShardWriter, iter_records, temporary_reader
from components.data.sources import Geometry, RawSource, UnreadableFile, open_source
from components.errors import DataError
from components.store import Store, join_key

DATASET_FILE = "dataset.json"
FORMAT_VERSION = 2  # 1: whole splits as .npy files


@dataclass(frozen=True)
class PrepareConfig:
    """How a raw data set becomes a prepared one. Every field but ``concurrency`` changes the result."""

    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    image_size: int = 0  # 0: keep the native size (the images must share it); S: resize + center-crop to SxS
    max_unreadable: int = 0  # 0: the first unreadable file fails; N: skip and list up to N
    shard_bytes: int = SHARD_BYTES
    concurrency: int = 16  # files read and decoded at once

    def validate(self) -> None:
        for name, value in (("val_fraction", self.val_fraction), ("test_fraction", self.test_fraction)):
            if not 0.0 < value < 0.5:
                raise DataError(f"expected {name} between 0 and 0.5 (exclusive), got {value}")
        checks = [(self.image_size == 0 or 8 <= self.image_size <= 4096, "image_size 0 (native) or 8 to 4096", self.image_size),
                  (self.max_unreadable >= 0, "max_unreadable >= 0", self.max_unreadable),
                  (self.shard_bytes >= 1, "shard_bytes >= 1", self.shard_bytes),
                  (1 <= self.concurrency <= 256, "concurrency from 1 to 256", self.concurrency)]
        for ok, expected, found in checks:
            if not ok:
                raise DataError(f"expected {expected}, got {found!r}")

    def digest_fields(self) -> dict:
        fields = asdict(self)
        fields.pop("concurrency")
        return fields


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` records: the index of the shards and the data checks."""

    store_uri: str
    prefix: str
    content_hash: str
    source_format: str
    class_names: list[str]
    image_shape: list[int]
    counts: dict[str, int]
    class_histogram: dict[str, dict[str, int]]
    mean: list[float]
    std: list[float]
    split: dict
    shards: dict[str, list[dict]] = field(default_factory=dict)
    size_histogram: dict[str, int] = field(default_factory=dict)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    duplicates: dict = field(default_factory=dict)
    resized: bool = False
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def summary(self) -> dict:
        """The scalar facts, for KFP artifact metadata (the shard index and lists stay in ``dataset.json``)."""
        return {"store_uri": self.store_uri, "prefix": self.prefix, "content_hash": self.content_hash,
                "source_format": self.source_format, "image_shape": self.image_shape, "counts": self.counts,
                "classes": len(self.class_names), "unreadable": len(self.unreadable),
                "duplicates_across_splits": self.duplicates.get("across_splits", 0)}

    def shard_list(self, split: str) -> list[ShardInfo]:
        if split not in self.shards:
            raise DataError(f"expected a {split!r} split in the prepared data set {self.prefix}, found {sorted(self.shards)}")
        return [ShardInfo(**s) for s in self.shards[split]]


def stratified_split(labels: np.ndarray, config: PrepareConfig) -> dict[str, np.ndarray]:
    """Seeded, per-class split into train/val/test index arrays (each sorted)."""
    rng = np.random.default_rng(config.seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * config.test_fraction))
        n_val = int(round(len(idx) * config.val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {s: np.sort(np.concatenate(parts[s])) for s in SPLITS}


def write_order(indices: np.ndarray, split: str, seed: int) -> np.ndarray:
    """The order a split's images go into its shards: seeded random, so every shard is a sample of all classes."""
    return np.random.default_rng([seed, SPLITS.index(split)]).permutation(indices)


def prepare(data: Store, store: Store, config: PrepareConfig) -> DatasetInfo:
    """Read the raw data set in ``data`` and write it, prepared, to ``store`` (or reuse an earlier preparation)."""
    config.validate()
    source = open_source(data)
    try:
        _check_enough(source, config)
        prefix = dataset_prefix(source, config)
        if store.exists(join_key(prefix, DATASET_FILE)):
            return read_info(store, prefix)
        return _prepare_into(source, store, prefix, config)
    finally:
        source.close()


def dataset_prefix(source: RawSource, config: PrepareConfig) -> str:
    """``prepared/<digest>``: the digest of the raw listing and of the settings."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, source.source_format, source.fingerprint,
                                        config.digest_fields()]).encode())
    return join_key("prepared", digest.hexdigest()[:16])


def _prepare_into(source: RawSource, store: Store, prefix: str, config: PrepareConfig) -> DatasetInfo:
    with Decoder(len(source), config.concurrency) as decoder:  # its processes start while the rest is set up
        geometry = source.geometry(config.image_size)
        store.ensure_root()
        for stale in store.list(prefix):  # an earlier attempt that died before its index
            store.delete(stale)
        tally = Tally(source.class_names, geometry.channels)
        shards: dict[str, list[dict]] = {}
        try:
            for split, indices in stratified_split(source.labels, config).items():
                order = write_order(indices, split, config.seed)
                chunks = decoder.decoded(source.fetch, order, geometry, threads=not source.in_place)
                written = _write_split(chunks, store, prefix, split, geometry, tally, config)
                shards[split] = [asdict(s) for s in written]
            info = _describe(source, store, prefix, geometry, tally, shards, config)
        except BaseException:
            for key in store.list(prefix):
                store.delete(key)
            raise
    store.write_bytes(join_key(prefix, DATASET_FILE), info.to_json().encode())
    return info


def _write_split(chunks: Iterator[Chunk], store: Store, prefix: str, split: str, geometry: Geometry,
                 tally: Tally, config: PrepareConfig) -> list[ShardInfo]:
    writer = ShardWriter(store, prefix, split, geometry.shape, config.shard_bytes)
    try:
        for chunk in chunks:
            for error in chunk.unreadable:
                _skip(error, tally, config)
            writer.add(chunk.labels, chunk.pixels)
            tally.add(split, chunk)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _skip(error: UnreadableFile, tally: Tally, config: PrepareConfig) -> None:
    if config.max_unreadable == 0:
        raise DataError(f"{error} (set max_unreadable=N to skip and list up to N unreadable files)")
    tally.skip(error.key, error.reason)
    if len(tally.unreadable) > config.max_unreadable:
        raise DataError(f"found more than max_unreadable={config.max_unreadable} unreadable files; the last: {error}")


def _check_enough(source: RawSource, config: PrepareConfig) -> None:
    counts = np.bincount(source.labels, minlength=len(source.class_names))
    needed = int(np.ceil(1 / min(config.val_fraction, config.test_fraction)))
    for name, count in zip(source.class_names, counts):
        if count < needed:
            raise DataError(f"class {name!r} has {count} images; expected at least {needed} so every split gets one")


def _describe(source: RawSource, store: Store, prefix: str, geometry: Geometry, tally: Tally,
              shards: dict[str, list[dict]], config: PrepareConfig) -> DatasetInfo:
    histogram = tally.histogram()
    empty = [s for s in SPLITS if sum(histogram.get(s, {}).values()) == 0]
    if empty:
        raise DataError(f"expected images in every split, found none left in {empty} after skipping unreadable files")
    mean, std = tally.stats.result()
    return DatasetInfo(
        store_uri=store.uri, prefix=prefix, content_hash=tally.content_hash(geometry.shape),
        source_format=source.source_format, class_names=list(source.class_names), image_shape=geometry.shape,
        counts={s: sum(histogram[s].values()) for s in SPLITS}, class_histogram=histogram, mean=mean, std=std,
        split=asdict(config), shards=shards, size_histogram=dict(sorted(tally.sizes.items())),
        unreadable=tally.unreadable, duplicates=tally.duplicates(source.name), resized=geometry.resized,
    )


def read_info(store: Store, prefix: str) -> DatasetInfo:
    """Read ``dataset.json`` of a prepared data set."""
    info_key = join_key(prefix, DATASET_FILE)
    if not store.exists(info_key):
        raise DataError(f"no prepared data set at {store.uri}/{prefix}: {DATASET_FILE} is missing")
    fields = json.loads(store.read_bytes(info_key))
    if fields.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{store.uri}/{info_key}: expected prepared-data format {FORMAT_VERSION}, found "
                        f"{fields.get('format_version', 1)}: prepare the data set again")
    return DatasetInfo(**fields)


def first_examples(store: Store, info: DatasetInfo, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images of ``split`` in stored order (a seeded random sample): for smoke tests and examples."""
    pixels, labels, have = [], [], 0
    with temporary_reader(store, info.prefix, info.image_shape) as reader:
        for x, y in iter_records(reader, info.shard_list(split), count):
            pixels.append(x[: count - have])
            labels.append(y[: count - have])
            have += len(labels[-1])
            if have >= count:
                break
    return np.concatenate(pixels), np.concatenate(labels)
