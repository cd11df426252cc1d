"""Dynamic batching: unit tests of serving.batching with a recording forward pass, then the real server
under concurrent HTTP requests."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
from prometheus_client import REGISTRY

from components.modelfile import load_model
from components.predict import predict_proba
from serving.batching import Batcher, BatchingOptions
from serving.client import infer_v2, v2_output
from tests.conftest import SERVED_MODEL


class Recorder:
    """A forward pass that returns each image's sum (so rows are traceable) and records batch sizes."""

    def __init__(self, release: threading.Event | None = None):
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.release = release
        self.released: list[bool] = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.release is not None:
            # Set by a coroutine on the event loop: only possible if this pass is not blocking the loop.
            self.released.append(self.release.wait(timeout=5))
        self.sizes.append(len(images))
        self.threads.add(threading.current_thread().name)
        return images.reshape(len(images), -1).sum(axis=1, keepdims=True)


def requests_of(sizes: list[int]) -> list[np.ndarray]:
    """Request i holds images whose pixels all equal i*10 + j (j: image index in the request)."""
    return [np.stack([np.full((1, 2, 2), i * 10 + j, dtype=np.float32) for j in range(n)]) for i, n in enumerate(sizes)]


def run_concurrently(batcher: Batcher, batch: list[np.ndarray]) -> list[np.ndarray]:
    async def main():
        try:
            return await asyncio.gather(*(batcher.run(images) for images in batch))
        finally:
            batcher.close()

    return asyncio.run(main())


def samples(model_name: str) -> tuple[float, float]:
    """(forward passes, images) recorded in the batch-size histogram for ``model_name``."""
    labels = {"model_name": model_name}
    return REGISTRY.get_sample_value("inference_batch_size_count", labels) or 0, REGISTRY.get_sample_value("inference_batch_size_sum", labels) or 0


def test_concurrent_requests_share_forward_passes_and_each_gets_its_own_rows():
    recorder, batch = Recorder(), requests_of([1, 2, 3, 1, 2, 2])
    outputs = run_concurrently(Batcher(recorder, BatchingOptions(True, max_batch_size=4, max_wait_ms=10_000), "unit-coalesce"), batch)
    for images, rows in zip(batch, outputs):
        np.testing.assert_array_equal(rows, images.reshape(len(images), -1).sum(axis=1, keepdims=True))
    # A batch closes, without waiting, when full or when the next request would overflow it (that one starts the next).
    assert recorder.sizes == [3, 4, 4]
    assert samples("unit-coalesce") == (3, 11)


def test_a_request_larger_than_the_batch_limit_runs_alone():
    recorder = Recorder()
    outputs = run_concurrently(Batcher(recorder, BatchingOptions(True, max_batch_size=2, max_wait_ms=0), "unit-large"), requests_of([5, 1]))
    assert recorder.sizes == [5, 1] and [len(o) for o in outputs] == [5, 1]


def test_without_batching_every_request_is_its_own_forward_pass():
    recorder = Recorder()
    run_concurrently(Batcher(recorder, BatchingOptions(False), "unit-off"), requests_of([1, 2, 1]))
    assert sorted(recorder.sizes) == [1, 1, 2]


@pytest.mark.parametrize("enabled", [True, False])
def test_forward_passes_run_on_one_worker_thread_while_the_event_loop_stays_free(enabled):
    release = threading.Event()
    recorder = Recorder(release)
    batcher = Batcher(recorder, BatchingOptions(enabled, max_wait_ms=0), "unit-offloop")

    async def main():
        pending = asyncio.gather(*(batcher.run(images) for images in requests_of([1, 1])))
        # The forward pass is blocked on `release`; the loop still runs other work, which releases it.
        await asyncio.sleep(0.01)
        release.set()
        await pending
        batcher.close()

    asyncio.run(main())
    assert recorder.released and all(recorder.released)
    assert recorder.threads == {"unit-offloop-forward_0"}


def test_a_failing_forward_pass_fails_its_requests_and_the_next_batch_still_runs():
    calls = []

    def flaky(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return images.reshape(len(images), -1)[:, :1]

    batcher = Batcher(flaky, BatchingOptions(True, max_batch_size=8, max_wait_ms=0), "unit-flaky")

    async def main():
        first = await asyncio.gather(*(batcher.run(i) for i in requests_of([1, 1])), return_exceptions=True)
        second = await batcher.run(requests_of([1])[0])
        batcher.close()
        return first, second

    first, second = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) and "device lost" in str(e) for e in first)
    assert second.shape == (1, 1)


def test_batching_options_refuse_nonsense():
    with pytest.raises(ValueError, match="max_batch_size >= 1"):
        BatchingOptions(True, max_batch_size=0)


# -- the real server ------------------------------------------------------------------------------------------------


def server_batches(url: str) -> tuple[float, float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    values = {}
    for name in ("count", "sum"):
        match = re.search(rf'^inference_batch_size_{name}{{model_name="{SERVED_MODEL}"}} (\S+)$', text, re.MULTILINE)
        values[name] = float(match.group(1)) if match else 0.0
    return values["count"], values["sum"]


def test_concurrent_http_requests_are_batched_and_get_the_unbatched_answers(predictor, served_version):
    images = np.random.default_rng(11).integers(0, 256, (24, 1, 28, 28)).astype(np.float32)
    net, card = load_model(served_version)
    expected = np.concatenate([predict_proba(net, torch.from_numpy(images[i : i + 1]), card).numpy() for i in range(len(images))])
    passes_before, images_before = server_batches(predictor)
    barrier = threading.Barrier(len(images))

    def one(i: int) -> np.ndarray:
        barrier.wait(timeout=30)
        return np.asarray(v2_output(infer_v2(predictor, SERVED_MODEL, images[i : i + 1]), "probabilities"))

    with ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(one, range(len(images))))
    np.testing.assert_allclose(np.stack(answers), expected, atol=1e-5)
    passes, served = server_batches(predictor)
    assert served - images_before == len(images)
    assert passes - passes_before < len(images)  # fewer forward passes than requests: some were coalesced


def test_a_lone_request_does_not_wait_for_company():
    recorder = Recorder()
    batcher = Batcher(recorder, BatchingOptions(True, max_batch_size=8, max_wait_ms=60_000), "unit-lone")

    async def main():
        try:
            # With a minute's max wait, this finishes in time only because nothing else is on its way.
            return await asyncio.wait_for(batcher.run(requests_of([1])[0]), timeout=30)
        finally:
            batcher.close()

    assert asyncio.run(main()).shape == (1, 1) and recorder.sizes == [1]


def test_a_batch_waits_for_a_request_that_is_still_being_decoded():
    recorder = Recorder()
    batcher = Batcher(recorder, BatchingOptions(True, max_batch_size=8, max_wait_ms=60_000), "unit-arriving")
    first, second = requests_of([1, 1])

    async def main():
        with batcher.arriving():  # the second request is being decoded
            pending = asyncio.ensure_future(batcher.run(first))
            await asyncio.sleep(0.05)  # long enough for the batcher to have run `first` alone, had it not waited
            assert not pending.done()
            later = asyncio.ensure_future(batcher.run(second))
        await asyncio.gather(pending, later)
        batcher.close()

    asyncio.run(main())
    assert recorder.sizes == [2]
