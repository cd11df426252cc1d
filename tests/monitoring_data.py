"""Data for the monitoring tests: a real version of the bundled digits pushed with its reference, and records
in the collected format written straight from images with :func:`image_stats`, as the predictor computes them.

The fixtures ``pushed`` and ``held_out`` reach every test module through tests/conftest.py.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from components.data.prepare import DatasetInfo
from components.modelfile import MANIFEST_FILE
from components.monitoring.stats import image_stats
from components.push.push import push_model
from components.registry import Registry
from components.store import Store, join_key, open_store
from tests.helpers import load_split, prepare_at

MODEL = "digits"
START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SINCE, UNTIL = START + timedelta(minutes=30), START + timedelta(hours=3)


@pytest.fixture(scope="module")
def pushed(sample_uri: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, DatasetInfo]:
    """A store with a prepared data set and version 1 of MODEL, pushed with its reference and promoted."""
    store = open_store(str(tmp_path_factory.mktemp("monitoring") / "store"))
    info = prepare_at(sample_uri, store.uri, seed=0, shard_bytes=200_000)  # several training shards to stream
    from tests.conftest import make_version_folder  # here: conftest imports this module

    folder = make_version_folder(tmp_path_factory.mktemp("model"))
    (folder / MANIFEST_FILE).unlink()
    for path in folder.iterdir():
        store.upload_file(f"runs/r1/model/{path.name}", path)
    push_model(store, MODEL, "runs/r1/model", {}, {"decision": "accepted", "reason": "test"}, {"run_id": "r1"},
               dataset_prefix=info.prefix)
    Registry(store, MODEL).promote(1, "test")
    return store, info


@pytest.fixture(scope="module")
def held_out(pushed: tuple[Store, DatasetInfo]) -> tuple[np.ndarray, np.ndarray]:
    """The validation and test images (never trained on) and their labels."""
    parts = [load_split(pushed[1], split) for split in ("val", "test")]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def records(pixels: np.ndarray, predicted: np.ndarray, version: str | int | None = "1", start: datetime = SINCE,
            step: timedelta = timedelta(seconds=20)) -> list[dict]:
    """Collected records of ``pixels`` (``uint8 [N,C,H,W]``), one every ``step`` from ``start``."""
    stats = image_stats(pixels)
    return [{"time": (start + i * step).isoformat(), "model": MODEL, "version": version, "request_id": f"r{i}", "index": 0,
             "sent": {"shape": list(pixels.shape[1:])}, "mean": stats.mean[i].tolist(), "std": stats.std[i].tolist(),
             "hist": stats.hist[i].tolist(), "predicted": int(predicted[i]), "label": str(predicted[i]),
             "confidence": 0.9, "image": None} for i in range(len(pixels))]


def write_records(store: Store, rows: list[dict], part: str = "part-0") -> None:
    """Into their date=/hour= partitions, one JSON line each, as the collector lays them out."""
    by_hour = defaultdict(list)
    for row in rows:
        t = datetime.fromisoformat(row["time"])
        by_hour[f"date={t:%Y-%m-%d}/hour={t:%H}"].append(json.dumps(row))
    for partition, lines in by_hour.items():
        store.write_bytes(join_key("collected", MODEL, partition, f"{part}.jsonl"), ("\n".join(lines) + "\n").encode())


def serving_store(pushed: tuple[Store, DatasetInfo], store_uri: str, tmp_path: Path) -> Store:
    """A store on the backend under test holding a copy of version 1 (its reference too), in production."""
    store = open_store(store_uri)
    source = Registry(pushed[0], MODEL)
    manifest = source.download(1, tmp_path / "v1")
    (tmp_path / "v1" / MANIFEST_FILE).unlink()
    registry = Registry(store, MODEL)
    registry.push(tmp_path / "v1", {k: manifest[k] for k in ("metrics", "verdict", "lineage")})
    registry.promote(1, "test")
    return store


def shifted(pixels: np.ndarray, labels: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    if how == "inverted":
        return 255 - pixels, labels
    if how == "darkened":
        return (pixels * 0.4).astype(np.uint8), labels
    return pixels, np.where(labels == 3, 5, labels)  # "class 3 gone": the model never answers 3 any more
