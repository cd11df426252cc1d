"""Prepare a raw data set for training: validate, split deterministically, write to the store.

The prepared data set is a folder in the store, ``prepared/<digest>/``, holding
``{train,val,test}-images.npy`` (uint8 [N,C,H,W]), ``{train,val,test}-labels.npy`` (int64 [N]) and
``dataset.json``. The digest covers the content and the split parameters, so preparing the same data
the same way twice reuses the folder. ``dataset.json`` is written last: a folder without it is
incomplete and is rewritten, never read.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass

import numpy as np

from components.data.sources import RawDataset, load_raw
from components.errors import DataError
from components.preprocessing import channel_stats
from components.store import Store, join_key, open_store

SPLITS = ("train", "val", "test")
DATASET_FILE = "dataset.json"


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        for name, value in (("val_fraction", self.val_fraction), ("test_fraction", self.test_fraction)):
            if not 0.0 < value < 0.5:
                raise DataError(f"expected {name} between 0 and 0.5 (exclusive), got {value}")


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` records; also the prepare step's artifact metadata."""

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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


@dataclass
class PreparedData:
    info: DatasetInfo
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


def content_hash(raw: RawDataset) -> str:
    """SHA-256 of the decoded images, labels and class names (independent of file compression)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(raw.class_names).encode())
    digest.update(str(raw.images.shape).encode())
    digest.update(np.ascontiguousarray(raw.images).tobytes())
    digest.update(raw.labels.astype("<i8").tobytes())
    return digest.hexdigest()


def stratified_split(labels: np.ndarray, config: SplitConfig) -> dict[str, np.ndarray]:
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


def prepare(data_uri: str, store_uri: str, config: SplitConfig) -> DatasetInfo:
    """Load and validate the raw data, split it, and write the prepared data set to the store."""
    config.validate()
    raw = load_raw(open_store(data_uri))
    _check_enough(raw, config)
    splits = stratified_split(raw.labels, config)
    digest_source = f"{content_hash(raw)}:{config.val_fraction}:{config.test_fraction}:{config.seed}"
    prefix = join_key("prepared", hashlib.sha256(digest_source.encode()).hexdigest()[:16])
    info = _describe(raw, splits, store_uri, prefix, config)
    store = open_store(store_uri)
    if not store.exists(join_key(prefix, DATASET_FILE)):
        _write(store, prefix, raw, splits, info)
    return info


def _check_enough(raw: RawDataset, config: SplitConfig) -> None:
    counts = np.bincount(raw.labels, minlength=len(raw.class_names))
    needed = int(np.ceil(1 / min(config.val_fraction, config.test_fraction)))
    for name, count in zip(raw.class_names, counts):
        if count < needed:
            raise DataError(f"class {name!r} has {count} images; expected at least {needed} so every split gets one")


def _describe(raw: RawDataset, splits, store_uri: str, prefix: str, config: SplitConfig) -> DatasetInfo:
    mean, std = channel_stats(raw.images[splits["train"]])
    histogram = {
        s: {name: int(n) for name, n in zip(raw.class_names, np.bincount(raw.labels[idx], minlength=len(raw.class_names)))}
        for s, idx in splits.items()
    }
    return DatasetInfo(
        store_uri=store_uri,
        prefix=prefix,
        content_hash=content_hash(raw),
        source_format=raw.source_format,
        class_names=raw.class_names,
        image_shape=list(raw.images.shape[1:]),
        counts={s: int(len(idx)) for s, idx in splits.items()},
        class_histogram=histogram,
        mean=mean,
        std=std,
        split=asdict(config),
    )


def _write(store: Store, prefix: str, raw: RawDataset, splits, info: DatasetInfo) -> None:
    for split, idx in splits.items():
        store.write_bytes(join_key(prefix, f"{split}-images.npy"), _npy(raw.images[idx]))
        store.write_bytes(join_key(prefix, f"{split}-labels.npy"), _npy(raw.labels[idx]))
    store.write_bytes(join_key(prefix, DATASET_FILE), info.to_json().encode())


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def load_prepared(store_uri: str, prefix: str, splits: tuple[str, ...] = SPLITS) -> PreparedData:
    """Read a prepared data set (only the named splits) back from the store."""
    store = open_store(store_uri)
    info = read_info(store_uri, prefix)
    images = {s: _load_npy(store, join_key(prefix, f"{s}-images.npy")) for s in splits}
    labels = {s: _load_npy(store, join_key(prefix, f"{s}-labels.npy")) for s in splits}
    return PreparedData(info, images, labels)


def read_info(store_uri: str, prefix: str) -> DatasetInfo:
    """Read ``dataset.json`` of a prepared data set."""
    store = open_store(store_uri)
    info_key = join_key(prefix, DATASET_FILE)
    if not store.exists(info_key):
        raise DataError(f"no prepared data set at {store_uri}/{prefix}: {DATASET_FILE} is missing")
    return DatasetInfo(**json.loads(store.read_bytes(info_key)))


def _load_npy(store: Store, key: str) -> np.ndarray:
    return np.load(io.BytesIO(store.read_bytes(key)), allow_pickle=False)
