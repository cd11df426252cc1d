"""Per-call costs on the predictor's request path, in-process: ``python benchmarks/request_path.py [--repeat N]``.

Prints one table, every row measured in this run (the best of ``--repeat`` timings, so a busy machine moves
the ratios less than the absolute figures):

- parsing a single-image v2 FP32 body (784 values): the orjson fast path against pydantic's validation;
- an id for a request that came without one: the per-process counter against a uuid4;
- the access-log line: written directly against through the logging machinery (both into memory);
- the per-image statistics collection computes: float32 in place against the float64 computation before, and,
  in a fresh interpreter, in chunks against one call on the whole slice;
- collection: queueing one request (the request path), and formatting (the event loop's work in the server,
  a slice at a time) and writing one record (the thread's CPU, no pacing), into a local store in a temporary
  folder.
"""

from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.monitoring.stats import HIST_BINS, image_stats  # noqa: E402
from components.store import open_store  # noqa: E402
from serving import access_log, collect, protocol  # noqa: E402
from serving.model import new_request_id  # noqa: E402


def best_us(call, number: int, repeat: int) -> float:  # noqa: ANN001 - any callable
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def parse_rows(repeat: int) -> list[tuple[str, float, float]]:
    pixels = np.random.default_rng(1).integers(0, 256, 784).tolist()
    body = orjson.dumps({"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": pixels}]})
    fast = best_us(lambda: protocol.parse_infer_body(body, None, "bench"), 2000, repeat)
    plain, protocol.plain_header = protocol.plain_header, lambda text: None  # pydantic decides every body
    try:
        slow = best_us(lambda: protocol.parse_infer_body(body, None, "bench"), 2000, repeat)
    finally:
        protocol.plain_header = plain
    ids = best_us(new_request_id, 100_000, repeat), best_us(lambda: str(uuid.uuid4()), 100_000, repeat)
    return [("parse a v2 FP32 body (784 values)", fast, slow), ("request id", *ids)]


def access_row(repeat: int) -> tuple[str, float, float]:
    handler = access_log.BatchedStreamHandler(io.StringIO(), interval_s=3600)
    handler.setFormatter(access_log.AccessLineFormatter(logging.Formatter()))
    logger = logging.getLogger("bench.access")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    args = ("127.0.0.1:5000", "POST", "/v2/models/bench/infer", "1.1", 200)
    direct = access_log.DirectAccessLogger(logger, handler)
    return ("access-log line", best_us(lambda: direct.info('%s - "%s %s HTTP/%s" %d', *args), 20_000, repeat),
            best_us(lambda: logger.info('%s - "%s %s HTTP/%s" %d', *args), 20_000, repeat))


def stats_row(repeat: int) -> tuple[str, float, float]:
    """The collection thread's per-image statistics on one slice of MNIST-sized images, against the float64
    computation they replaced (the same results to ~3e-8), in one call (which the old code took whole)."""
    pixels = np.random.default_rng(3).integers(0, 256, (collect.WRITE_SLICE, 1, 28, 28)).astype(np.float32)
    per_image = 1 / collect.WRITE_SLICE
    return (f"image statistics, per image (slices of {collect.WRITE_SLICE})", best_us(lambda: image_stats(pixels), 1000, repeat) * per_image,
            best_us(lambda: _image_stats_float64(pixels), 1000, repeat) * per_image)


# Run in a fresh interpreter: how glibc serves the temporaries depends on what the process allocated before.
_FRESH_STATS = """
import sys, timeit, numpy as np
from components.monitoring import stats
pixels = np.random.default_rng(3).integers(0, 256, ({n}, 1, 28, 28)).astype(np.float32)
call = stats.image_stats if sys.argv[1] == "chunks" else stats._image_stats
print(min(timeit.repeat(lambda: call(pixels), number=1000, repeat={repeat})) / 1000 / {n} * 1e6)
"""


def fresh_stats_row(repeat: int) -> tuple[str, float, float]:
    """The statistics on one slice in a fresh process: in chunks under glibc's 128 KiB mmap threshold (what
    image_stats does) against the same float32 code on the whole slice in one call."""
    code = _FRESH_STATS.format(n=collect.WRITE_SLICE, repeat=repeat)
    root = str(Path(__file__).resolve().parent.parent)

    def run(how: str) -> float:
        return float(subprocess.run([sys.executable, "-c", code, how], cwd=root, capture_output=True, text=True, check=True).stdout)

    return (f"image statistics, per image, fresh process (chunks against one call of {collect.WRITE_SLICE})", run("chunks"), run("whole"))


def _image_stats_float64(pixels: np.ndarray) -> tuple[np.ndarray, ...]:
    """components.monitoring.stats.image_stats as it was before float32: float64 temporaries throughout."""
    n, c = pixels.shape[:2]
    flat = pixels.reshape(n, c, -1).astype(np.float64) / 255.0
    bins = np.minimum((flat.reshape(n, -1) * HIST_BINS).astype(np.int64), HIST_BINS - 1)
    offsets = (np.arange(n, dtype=np.int64) * HIST_BINS)[:, None]
    counts = np.bincount((bins + offsets).ravel(), minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    return flat.mean(axis=2), flat.std(axis=2), counts / bins.shape[1]


def collect_rows(records: int) -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory() as folder:
        collector = collect.Collector(open_store(folder), "bench", collect.CollectOptions(fraction=1.0, queue_size=records, batch_records=records,
                                                                           max_queued_bytes=2**31, flush_interval_s=3600))
        pixels = np.random.default_rng(2).integers(0, 256, (1, 1, 28, 28)).astype(np.float32)
        probs, labels, sent = np.full((1, 10), 0.1, np.float32), [str(i) for i in range(10)], ({"shape": [1, 28, 28]},)
        began = time.perf_counter()
        for n in range(records):
            collector.offer(pixels, probs, f"r-{n}", "1", labels, sent)
        offer = (time.perf_counter() - began) / records * 1e6
        batch = collector._take(records)
        pause, collect.WRITE_PAUSE_S, duty, collect.WRITE_DUTY = collect.WRITE_PAUSE_S, 0.0, collect.WRITE_DUTY, 1.0
        try:
            began = time.thread_time()
            collector._add_chunks(batch)  # what the event loop does per slice in the server
            collector._write_chunks()
            write = (time.thread_time() - began) / records * 1e6
        finally:
            collect.WRITE_PAUSE_S, collect.WRITE_DUTY = pause, duty
            collector.close()
    return [("collect: queue one request (request path)", offer, float("nan")),
            ("collect: format and write one record (thread CPU)", write, float("nan"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timings per row; each row is the best")
    parser.add_argument("--records", type=int, default=5000, help="records for the collection rows")
    args = parser.parse_args()
    rows = [*parse_rows(args.repeat), access_row(args.repeat), stats_row(args.repeat), fresh_stats_row(args.repeat), *collect_rows(args.records)]
    print("| path | now µs | before µs | before/now |\n|---|---:|---:|---:|")
    for name, now, before in rows:
        ratio = "" if before != before else f"{before / now:.1f}×"  # NaN: nothing to compare with
        print(f"| {name} | {now:.2f} | {'' if before != before else f'{before:.2f}'} | {ratio} |")
    print("(before: pydantic's validation, uuid4, the logging machinery, float64 statistics; fresh process: one unchunked call)")


if __name__ == "__main__":
    main()
