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
