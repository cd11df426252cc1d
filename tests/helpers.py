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
