"""The drift report end to end against a running local server: held-out images, then the same images inverted.

    .venv/bin/python -m pipelines run --local --workdir /tmp/drift --param collect_fraction=1.0 --param serving_port=8391
    .venv/bin/python -m benchmarks.drift_check --workdir /tmp/drift --url http://127.0.0.1:8391

Sends the prepared test split to the server (requests of 8, as pixel values), writes the drift report of what
the server collected since just before, then sends the same images inverted and reports on those alone.
Prints both headlines: the first should read NO DRIFT, the second DRIFT naming what moved.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from components.data.prepare import first_examples, read_info
from components.monitoring.drift import Thresholds, drift_report
from components.monitoring.report import headline
from components.registry import Registry
from components.store import open_store
from serving.client import predict_v1


def send(url: str, model: str, pixels: np.ndarray, batch: int = 8) -> None:
    for start in range(0, len(pixels), batch):
        predict_v1(url, model, pixels[start:start + batch].astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="the local run's work dir (its store collects)")
    parser.add_argument("--url", required=True, help="the local server, e.g. http://127.0.0.1:8391")
    parser.add_argument("--model", default="digits")
    args = parser.parse_args()
    store = open_store(str(args.workdir.resolve() / "store"))
    registry = Registry(store, args.model)
    prefix = registry.manifest(registry.production().version)["lineage"]["dataset_prefix"]
    pixels, _ = first_examples(store, read_info(store, prefix), "test", 10_000)
    for name, images in (("held-out test images", pixels), ("the same images inverted", 255 - pixels)):
        since = datetime.now(UTC)
        send(args.url, args.model, images)
        time.sleep(2.5)  # the collector writes a batch at least every second
        report = drift_report(store, args.model, since, datetime.now(UTC), Thresholds(), store)
        print(f"{len(images)} {name}: {headline(report)}")


if __name__ == "__main__":
    main()
