"""Small helpers shared by the storage and registry tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from components.errors import StoreError


def run_together(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released at the same moment; return each one's result or StoreError."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except StoreError as exc:  # ConflictError included: losing a race is a result here
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def prepare_at(raw_uri: str, store_uri: str, **settings: Any):
    """Prepare the raw data at ``raw_uri`` into ``store_uri`` (both opened here) with PrepareConfig ``settings``."""
    from components.data.prepare import PrepareConfig, prepare
    from components.store import open_store

    return prepare(open_store(raw_uri), open_store(store_uri), PrepareConfig(**settings))


def load_split(info, split: str):
    """Every image of a (small, test-sized) prepared split: ``(uint8 [N,C,H,W], int64 [N])`` in stored order."""
    import numpy as np

    from components.data.shards import iter_records, temporary_reader
    from components.store import open_store

    with temporary_reader(open_store(info.store_uri), info.prefix, info.image_shape) as reader:
        parts = list(iter_records(reader, info.shard_list(split), 1 << 16))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class TickingClock:
    """A :class:`components.kube.Clock` whose every reading is ``step_s`` later than the last; sleeping is free."""

    def __init__(self, step_s: float = 10.0):
        self._next, self._step = 0.0, step_s

    def monotonic(self) -> float:
        now, self._next = self._next, self._next + self._step
        return now

    def sleep(self, seconds: float) -> None:
        pass


def sample_profile(peak_rss_mib: float = 612.0, budget_ms: float = 50.0, runtime: str = "onnx", **chosen: Any) -> dict[str, Any]:
    """A version profile as components.profile writes it: onnx chosen, fitting the budget up to concurrency 8."""
    served = [
        {"concurrency": 1, "rps": 400.0, "p50_ms": 2.4, "p99_ms": 4.0, "cpu_ms": 1.1, "errors": 0},
        {"concurrency": 8, "rps": 1500.0, "p50_ms": 5.0, "p99_ms": 12.5, "cpu_ms": 0.9, "errors": 0},
        {"concurrency": 32, "rps": 1600.0, "p50_ms": 19.0, "p99_ms": 80.0, "cpu_ms": 0.8, "errors": 0},
    ]
    measured = {"load_s": 0.2, "peak_rss_mib": peak_rss_mib, "base_rss_mib": 300.0, "forward_ips": {"1": 3000.0, "64": 20000.0}, "served": served,
                "within_budget": 8, **chosen}
    return {"format": 1, "runtime": runtime, "latency_budget_ms": budget_ms, "seconds_per_level": 2.0, "max_batch": 64,
            "machine": {"cpu": "test CPU", "cores": 2, "threads": 1, "device": "cpu"},
            "runtimes": {runtime: measured, "torch": {**measured, "peak_rss_mib": 900.0}} if runtime != "torch" else {runtime: measured}}
