"""More than one server process (serving.workers): real `python -m serving` processes over HTTP on 127.0.0.1."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from serving.__main__ import build_parser, resolve_workers
from serving.client import infer_v2, v2_output
from serving.workers import WorkerPlan, parse_workers
from tests.conftest import SERVED_MODEL, free_port, start_predictor, wait_ready
from tests.test_collect import collected, post_v2

BURST = 48
# A batching wait long enough that a burst's requests coalesce in each process on a busy test machine.
OPTIONS = ("--max-batch-size", "32", "--max-batch-wait-ms", "50")


def start(version: Path, tmp_path: Path, name: str, *options: str) -> tuple[subprocess.Popen, str, Path]:
    port, log = free_port(), tmp_path / f"{name}.log"
    proc = start_predictor(str(version), port, *OPTIONS, *options, log=log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, log)
    return proc, url, log


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def children(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children()


def worker_counts(url: str, name: str) -> dict[str, float]:
    """``inference_worker_NAME_total`` per worker index, from whichever process answers /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    pattern = rf'^inference_worker_{name}_total{{model_name="{SERVED_MODEL}",worker="(\d+)"}} (\S+)$'
    return {worker: float(value) for worker, value in re.findall(pattern, text, re.MULTILINE)}


def batch_size_sum(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf'^inference_batch_size_sum{{model_name="{SERVED_MODEL}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def burst(url: str, images: np.ndarray) -> list[np.ndarray]:
    """One request per image, all sent at once (one connection each)."""
    barrier = threading.Barrier(len(images))

    def one(i: int) -> np.ndarray:
        barrier.wait(timeout=30)
        return np.asarray(v2_output(infer_v2(url, SERVED_MODEL, images[i : i + 1]), "probabilities"))  # raises unless 200

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, range(len(images))))


@pytest.fixture(scope="module")
def burst_served(served_version, tmp_path_factory):
    """A burst of concurrent requests to a 2-process server, the same images to a 1-process server; the answers
    of both and the 2-process server's metrics before and after."""
    tmp = tmp_path_factory.mktemp("workers")
    images = np.random.default_rng(5).integers(0, 256, (BURST, 1, 28, 28)).astype(np.float32)
    one, one_url, _ = start(served_version, tmp, "one", "--workers", "1")
    try:
        expected = np.concatenate([v2_output(infer_v2(one_url, SERVED_MODEL, images[i : i + 1]), "probabilities") for i in range(BURST)])
    finally:
        stop(one)
    two, url, log = start(served_version, tmp, "two", "--workers", "2")
    try:
        before = {name: worker_counts(url, name) for name in ("batches", "images")}, batch_size_sum(url)
        answers = np.concatenate(burst(url, images))
        after = {name: worker_counts(url, name) for name in ("batches", "images")}, batch_size_sum(url)
        processes = len(children(two))
    finally:
        stop(two)
    return {"expected": expected, "answers": answers, "before": before, "after": after, "processes": processes, "log": log}


def test_two_processes_answer_a_burst_exactly_as_one_process_does(burst_served):
    assert burst_served["processes"] == 2
    np.testing.assert_allclose(burst_served["answers"], burst_served["expected"], atol=1e-6)


def test_a_burst_lands_in_both_processes_each_with_its_own_batcher(burst_served):
    (before, sum_before), (after, sum_after) = burst_served["before"], burst_served["after"]
    batches = {w: n - before["batches"].get(w, 0.0) for w, n in after["batches"].items()}
    images = {w: n - before["images"].get(w, 0.0) for w, n in after["images"].items()}
    assert set(images) == {"0", "1"} and all(n > 0 for n in images.values()), images  # both processes served
    assert sum(images.values()) == BURST
    # /metrics sums every process's batch-size histogram, whichever process answers.
    assert sum_after - sum_before == BURST
    # Each process ran its own forward passes for its own requests (its batcher's counters), and requests were
    # coalesced: fewer passes than requests. Which process coalesced how many depends on how the burst's
    # requests happened to arrive (on a loaded machine one process may get them one at a time), so the
    # test asks it of the server, not of each process.
    for worker in ("0", "1"):
        assert 1 <= batches[worker] <= images[worker], (batches, images)
    assert sum(batches.values()) < BURST, (batches, images)


def test_sigterm_drains_every_process_and_the_server_exits_zero(served_version, tmp_path):
    store = tmp_path / "store"
    proc, url, log = start(served_version, tmp_path, "sigterm", "--workers", "2", "--collect-uri", str(store), "--collect-fraction", "1")
    pids = [c.pid for c in children(proc)]
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: post_v2(url, f"drain-{i}", np.full((1, 1, 28, 28), i, np.float32)), range(30)))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        proc.kill()
    assert len(pids) == 2 and not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    # Each process flushed its own collector on the way out: every answered request was recorded once.
    assert sorted(r["request_id"] for r in collected(str(store))) == sorted(f"drain-{i}" for i in range(30))
    assert log.read_text().count("collection stopped") == 2


def test_a_killed_process_takes_the_server_down_with_a_non_zero_exit(served_version, tmp_path):
    proc, _, log = start(served_version, tmp_path, "killed", "--workers", "2")
    victim, survivor = children(proc)
    try:
        victim.kill()
        assert proc.wait(timeout=60) != 0
    finally:
        proc.kill()
    deadline = time.monotonic() + 30
    while survivor.is_running() and survivor.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not survivor.is_running() or survivor.status() == psutil.STATUS_ZOMBIE
    assert f"stopping the server: process {victim.pid} exited with code -9" in log.read_text()


def test_auto_runs_one_process_per_cpu_and_splits_the_threads_between_them():
    assert parse_workers("auto", 4) == 4 and parse_workers("3", 4) == 3
    # Each process: its share of the CPUs, one of them for its event loop; never less than one thread.
    assert (WorkerPlan(4, 4).torch_threads, WorkerPlan(2, 8).torch_threads, WorkerPlan(1, 2).torch_threads) == (1, 3, 1)
    assert (WorkerPlan(4, 4).decode_threads, WorkerPlan(2, 8).decode_threads) == (1, 4)
    args = build_parser().parse_args(["--model-uri", "x", "--workers", "2", "--torch-threads", "3"])
    plan = resolve_workers(build_parser(), args)
    assert (plan.workers, args.torch_threads, args.decode_threads) == (2, 3, plan.decode_threads)  # a thread count given stays


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_worker_count_is_a_one_line_error(value, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        resolve_workers(parser, parser.parse_args(["--model-uri", "x", "--workers", value]))
    assert exit_info.value.code == 2
    assert f"expected --workers auto or a positive number of processes, got '{value}'" in capsys.readouterr().err
