"""Inference data collection (:mod:`serving.collect`): a real predictor over HTTP writing to both store backends
(a folder and Azurite), a SIGTERM right after a burst, an unreachable store, and the Collector on its own."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from components.blob_store import CONNECTION_STRING_ENV
from components.errors import StoreError
from components.imagefile import decode_fit
from components.monitoring.stats import RECORD_FIELDS, image_stats
from components.store import LocalStore, open_store
from serving.__main__ import main as serving_main
from serving.client import infer_v2_images, predict_v1, predict_v1_images
from serving.collect import WRITE_SLICE, CollectOptions, Collector
from tests.conftest import SERVED_MODEL as MODEL
from tests.conftest import free_port, ready_server, start_predictor, wait_ready

OBJECT_KEY = re.compile(rf"^collected/{MODEL}/date=(\d{{4}}-\d{{2}}-\d{{2}})/hour=(\d{{2}})/[A-Za-z0-9._-]+-\d{{6}}\.jsonl$")
WAIT_S = 20  # how long a test waits for something that happens within about a second


def pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28)).astype(np.float32)


def png(width: int, height: int, mode: str, seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def record_keys(store_uri: str) -> list[str]:
    return [k for k in open_store(store_uri).list(f"collected/{MODEL}") if not k.startswith(f"collected/{MODEL}/images/")]


def collected(store_uri: str) -> list[dict[str, Any]]:
    """Every record in the store, in the order written (partition, then writer sequence)."""
    store, records = open_store(store_uri), []
    for key in record_keys(store_uri):
        assert OBJECT_KEY.match(key), key
        date, hour = OBJECT_KEY.match(key).groups()
        for line in store.read_bytes(key).splitlines():
            record = json.loads(line)
            assert record["time"].startswith(f"{date}T{hour}:"), (key, record["time"])  # partitioned by its own hour
            records.append(record)
    return records


def wait_for_records(store_uri: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while len(records := collected(store_uri)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return records


def metric(url: str, name: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf'^{name}{{model_name="{MODEL}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def post_v2(url: str, request_id: str, images: np.ndarray) -> dict[str, Any]:
    body = {"id": request_id, "inputs": [{"name": "images", "shape": list(images.shape), "datatype": "FP32", "data": images.ravel().tolist()}]}
    response = requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def v2_rows(answer: dict[str, Any]) -> list[tuple[int, float]]:
    outputs = {o["name"]: o for o in answer["outputs"]}
    probs = np.reshape(outputs["probabilities"]["data"], outputs["probabilities"]["shape"])
    return [(int(c), float(p.max())) for c, p in zip(outputs["class"]["data"], probs)]


def start(served_version: Path, tmp_path: Path, *options: str) -> tuple[subprocess.Popen, int, Path]:
    port, log = free_port(), tmp_path / "server.log"
    # One process: one writer, so records come out in the order sent and one line counts them all
    # (several processes: tests/test_serving_workers.py).
    return start_predictor(str(served_version), port, "--workers", "1", *options, log=log), port, log


# -- a real predictor over HTTP ------------------------------------------------------------------------------------


def test_records_of_v1_and_v2_requests_appear_with_the_answers_and_the_images(store_uri, served_version, tmp_path):
    v1_pixels, v2_pixels = pixels(2, seed=1), pixels(2, seed=2)
    v1_png, v2_png = png(40, 30, "RGB", seed=3), png(50, 20, "L", seed=4)
    proc, port, log = start(served_version, tmp_path, "--collect-uri", store_uri, "--collect-fraction", "1", "--collect-images-fraction", "1")
    with ready_server(proc, port, log) as url:
        # Sent one after another: the records come out in this order.
        answers = [(p["class"], max(p["probabilities"])) for p in predict_v1(url, MODEL, v1_pixels)]
        answers += [(p["class"], max(p["probabilities"])) for p in predict_v1_images(url, MODEL, [v1_png])]
        answers += v2_rows(post_v2(url, "client/id 7", v2_pixels))
        answers += v2_rows(infer_v2_images(url, MODEL, [v2_png]))
        records = wait_for_records(store_uri, 6)  # written while the server runs: within about a second
        deadline = time.monotonic() + WAIT_S  # the counter moves just after the object is stored
        while metric(url, "inference_collect_records_total") < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(url, "inference_collect_records_total") == 6
        assert metric(url, "inference_collect_dropped_total") == 0

    assert len(records) == 6
    # What a data scientist does with the files: one DataFrame per object, the record's fields as columns.
    store = open_store(store_uri)
    frame = pd.concat([pd.read_json(io.BytesIO(store.read_bytes(k)), lines=True) for k in record_keys(store_uri)])
    assert list(frame.columns) == list(RECORD_FIELDS) and len(frame) == 6 and list(frame["predicted"]) == [a[0] for a in answers]
    fitted = [decode_fit(data, 1, 28, 28)[0].astype(np.float32) for data in (v1_png, v2_png)]
    expected_pixels = np.stack([*v1_pixels, fitted[0], *v2_pixels, fitted[1]])
    stats = image_stats(expected_pixels)
    sent = [{"shape": [1, 28, 28]}] * 2 + [{"width": 40, "height": 30, "mode": "RGB"}] + [{"shape": [1, 28, 28]}] * 2 + \
           [{"width": 50, "height": 20, "mode": "L"}]
    for n, record in enumerate(records):
        assert set(record) == set(RECORD_FIELDS), record
        assert (record["model"], record["version"], record["sent"]) == (MODEL, "1", sent[n])
        assert (record["predicted"], record["label"]) == (answers[n][0], str(answers[n][0]))
        assert record["confidence"] == pytest.approx(answers[n][1], abs=1e-5)
        np.testing.assert_allclose(record["mean"], stats.mean[n], atol=1e-6)
        np.testing.assert_allclose(record["std"], stats.std[n], atol=1e-6)
        np.testing.assert_allclose(record["hist"], stats.hist[n], atol=1e-6)
        assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0
        # The preprocessed image as the network saw it, under the images prefix of the record's hour.
        assert record["image"].startswith(f"collected/{MODEL}/images/date={record['time'][:10]}/hour={record['time'][11:13]}/")
        saved = np.asarray(Image.open(io.BytesIO(store.read_bytes(record["image"]))))
        np.testing.assert_array_equal(saved, expected_pixels[n, 0])
    assert [r["index"] for r in records] == [0, 1, 0, 0, 1, 0]
    ids = [r["request_id"] for r in records]
    assert ids[0] == ids[1] and len({ids[0], ids[2], ids[5]}) == 3  # one made-up id per v1 request
    assert ids[3] == ids[4] == "client/id 7"  # the client's v2 id; its image keys carry it made safe
    assert "client_id_7-0-" in records[3]["image"]


def test_sigterm_right_after_a_burst_loses_no_acknowledged_record(store_uri, served_version, tmp_path):
    burst = 40
    proc, port, log = start(served_version, tmp_path, "--collect-uri", store_uri, "--collect-fraction", "1")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: post_v2(url, f"burst-{i}", pixels(1, seed=100 + i)), range(burst)))
        # Every answer is in; stop at once, before the writer's next flush (about a second after the first record).
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    records = collected(store_uri)
    assert sorted(r["request_id"] for r in records) == sorted(f"burst-{i}" for i in range(burst)), log.read_text()[-2000:]
    assert "collection stopped: 40 records written, 0 dropped" in log.read_text()


# -- an unreachable store ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["blob", "local"])
def unreachable_store(request, tmp_path, monkeypatch) -> str:
    """A store every write to fails: a Blob endpoint where nothing listens, or a folder whose place is taken by a file."""
    if request.param == "local":
        blocked = tmp_path / "not-a-folder"
        blocked.write_text("a file where the store's folder should be")
        return str(blocked / "store")
    dead = f"http://127.0.0.1:{free_port()}/devstoreaccount1"  # a port just freed: nothing listens there
    key = base64.b64encode(os.urandom(64)).decode()
    monkeypatch.setenv(CONNECTION_STRING_ENV, f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint={dead};")
    return f"{dead}/collected"


def test_with_the_store_unreachable_requests_are_answered_and_drops_counted(unreachable_store, served_version, tmp_path):
    proc, port, log = start(served_version, tmp_path, "--collect-uri", unreachable_store, "--collect-fraction", "1")
    with ready_server(proc, port, log) as url:
        deadline = time.monotonic() + WAIT_S
        answered = 0
        while metric(url, "inference_collect_dropped_total") == 0 and time.monotonic() < deadline:
            assert predict_v1(url, MODEL, pixels(2, seed=answered))  # raises unless 200
            answered += 1
            time.sleep(0.05)
        assert metric(url, "inference_collect_dropped_total") > 0
        assert metric(url, "inference_collect_records_total") == 0
        assert len(predict_v1(url, MODEL, pixels(3, seed=0))) == 3  # still serving after the failures
    text = log.read_text()
    assert "collection: dropped" in text and "Traceback" not in text


# -- flags -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["--collect-uri", "x", "--collect-fraction", "1.5"], "expected a fraction from 0 to 1, got 1.5"),
    (["--collect-uri", "x", "--collect-fraction", "half"], "expected a fraction from 0 to 1, got half"),
    (["--collect-uri", "x", "--collect-fraction", "0.1", "--collect-images-fraction", "0.5"],
     "expected --collect-images-fraction at most --collect-fraction (0.1), got 0.5"),
    (["--collect-images-fraction", "0.01"], "--collect-images-fraction needs --collect-uri STORE_URI"),
])
def test_bad_collection_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        serving_main(["--model-uri", "unused", *argv])
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_a_collect_uri_that_names_no_store_refuses_to_start(caplog):
    with pytest.raises(SystemExit) as exited:
        serving_main(["--model-uri", "unused", "--collect-uri", "s3://bucket/monitoring"])
    assert exited.value.code == 2
    assert "refusing --collect-uri s3://bucket/monitoring: expected a local path" in caplog.text


# -- the Collector on its own -------------------------------------------------------------------------------------------


class GatedStore(LocalStore):
    """A folder whose writes wait until the test opens the gate."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.entered, self.gate = threading.Event(), threading.Event()

    def write_bytes(self, key: str, data: bytes) -> None:
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        super().write_bytes(key, data)


class FailingOnceStore(LocalStore):
    def __init__(self, root: Path):
        super().__init__(root)
        self.failed = False

    def write_bytes(self, key: str, data: bytes) -> None:
        if not self.failed:
            self.failed = True
            raise StoreError("the store is down")
        super().write_bytes(key, data)


def offer(collector: Collector, request_id: str, n: int = 1, seed: int = 0) -> None:
    probs = np.full((n, 10), 0.05)
    probs[:, 3] = 0.55
    collector.offer(pixels(n, seed), probs, request_id, "7", [str(d) for d in range(10)], [{"shape": [1, 28, 28]}] * n)


def records_in(root: Path) -> list[dict[str, Any]]:
    return collected(str(root))


IMAGE_BYTES = 1 * 28 * 28 * 4  # one float32 image of the test model


@pytest.mark.parametrize(("limit", "queued"), [
    ({"queue_size": 4}, 4),  # 4 records on the queue
    # 5 images' pixels: "first" is formatted (its pixels released) while the writer waits in the store
    ({"max_queued_bytes": 5 * IMAGE_BYTES}, 5),
])
def test_a_full_queue_drops_and_counts_without_blocking(tmp_path, limit, queued):
    store = GatedStore(tmp_path / "store")
    collector = Collector(store, MODEL, CollectOptions(fraction=1.0, batch_records=1, **limit))
    offer(collector, "first")
    assert store.entered.wait(WAIT_S)  # the writer holds "first" and waits in the store: the queue is empty
    began = time.monotonic()
    offer(collector, "burst", n=10)
    assert time.monotonic() - began < 0.5  # some queued, the rest dropped, no waiting (a blocking put would wait for the gate)
    assert collector.dropped == 10 - queued
    store.gate.set()
    collector.close()
    assert collector.written == 1 + queued and [r["request_id"] for r in records_in(store.root)] == ["first"] + ["burst"] * queued
    assert [r["index"] for r in records_in(store.root)] == [0, *range(queued)]


def test_sampling_records_the_fraction_asked_for_and_images_of_a_subset(tmp_path):
    def sampled(seed: int, folder: str) -> list[dict[str, Any]]:
        collector = Collector(LocalStore(tmp_path / folder), MODEL, CollectOptions(fraction=0.3, images_fraction=0.1), seed=seed)
        for i in range(1000):
            offer(collector, f"r{i}", seed=i)
        collector.close()
        return records_in(tmp_path / folder)

    records = sampled(seed=1, folder="a")
    assert 250 <= len(records) <= 350
    with_images = [r for r in records if r["image"] is not None]
    assert 60 <= len(with_images) <= 140
    assert [r["request_id"] for r in sampled(seed=1, folder="b")] == [r["request_id"] for r in records]  # the same seed, the same sample
    assert [r["request_id"] for r in sampled(seed=2, folder="c")] != [r["request_id"] for r in records]
    store = LocalStore(tmp_path / "a")
    first = with_images[0]
    saved = np.asarray(Image.open(io.BytesIO(store.read_bytes(first["image"]))))
    np.testing.assert_array_equal(saved, pixels(1, seed=int(first["request_id"][1:]))[0, 0])


def test_close_writes_everything_queued_at_once(tmp_path):
    # A flush interval far longer than the test: only close() can have written these.
    collector = Collector(LocalStore(tmp_path / "store"), MODEL, CollectOptions(fraction=1.0, flush_interval_s=600))
    for i in range(3):
        offer(collector, f"r{i}", n=2)
    began = time.monotonic()
    collector.close()
    assert time.monotonic() - began < 5
    records = records_in(tmp_path / "store")
    assert [(r["request_id"], r["index"]) for r in records] == [(f"r{i}", j) for i in range(3) for j in range(2)]
    assert {(r["predicted"], r["label"], r["confidence"], r["version"], r["image"]) for r in records} == {(3, "3", 0.55, "7", None)}
    offer(collector, "late")  # after close: counted, never written, never raises
    assert collector.dropped == 1 and len(records_in(tmp_path / "store")) == 6


def test_close_gives_up_on_a_store_that_hangs_and_counts_what_is_lost(tmp_path):
    store = GatedStore(tmp_path / "store")  # its gate stays shut: every write hangs
    collector = Collector(store, MODEL, CollectOptions(fraction=1.0, batch_records=1))
    offer(collector, "first")
    assert store.entered.wait(WAIT_S)
    offer(collector, "queued", n=3)
    began = time.monotonic()
    collector.close(timeout_s=0.3)
    assert time.monotonic() - began < 2 and collector.dropped == 3  # the 3 queued; "first" is the write that hangs
    store.gate.set()  # let the thread end


def test_a_failed_batch_is_counted_and_the_writer_goes_on(tmp_path):
    store = FailingOnceStore(tmp_path / "store")
    collector = Collector(store, MODEL, CollectOptions(fraction=1.0, flush_interval_s=0.05))
    offer(collector, "lost", n=3)
    deadline = time.monotonic() + WAIT_S
    while collector.dropped == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    offer(collector, "kept", n=2)
    collector.offer(None, None, "broken", None, [])  # not arrays at all: logged, never raised into the request
    collector.close()
    assert (collector.dropped, collector.written) == (3, 2)
    assert [r["request_id"] for r in records_in(store.root)] == ["kept", "kept"]


def test_full_slices_are_formatted_on_the_event_loop_and_the_rest_by_the_writer(tmp_path):
    """In the server, offer() runs on the event loop: each full slice becomes JSON lines there (no second thread
    takes the GIL for it); what is left over, and every store write, is the writer thread's."""
    collector = Collector(LocalStore(tmp_path / "store"), MODEL, CollectOptions(fraction=1.0, flush_interval_s=600))

    async def serve() -> int:
        for i in range(2 * WRITE_SLICE + 7):
            offer(collector, f"r{i}")
        for _ in range(3):  # the loop's rounds: the slices scheduled by offer() run
            await asyncio.sleep(0)
        return sum(chunk.count for chunk in collector._chunks)

    assert asyncio.run(serve()) == 2 * WRITE_SLICE  # formatted on the loop, not yet written (the writer sleeps)
    assert len(collector._pending) == 7 and not records_in(tmp_path / "store")
    collector.close()
    assert [r["request_id"] for r in records_in(tmp_path / "store")] == [f"r{i}" for i in range(2 * WRITE_SLICE + 7)]
    assert (collector.written, collector.dropped) == (2 * WRITE_SLICE + 7, 0)
