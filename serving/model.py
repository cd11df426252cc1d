"""The KServe predictor: a ``kserve.Model`` that serves one model version.

``load()`` materialises the version (a local folder or a store URI), verifies every file's SHA-256
against ``MANIFEST.json``, picks the runtime (:func:`components.runtimes.decide_runtime`: eager PyTorch or
the version's parity-checked ONNX export under onnxruntime), runs one forward pass, and only then sets
``ready``. ``predict()``
decodes the request (:mod:`serving.codec`), runs the forward pass through the batcher
(:mod:`serving.batching`, off the event loop) and answers v1 with a dict and v2 with an
``InferResponse``. Bad input raises :class:`kserve.errors.InvalidInput` (HTTP 400). ``answer_direct()`` is
the same for a plain request, called by :mod:`serving.routes` without KServe's data plane in between.

The registry version it serves (``version`` in ``MANIFEST.json``, which the registry writes once and a
pinned URI fixes) is on every inference answer: the :data:`VERSION_HEADER` header (v1 and v2) and the v2
``model_version`` field; :class:`serving.protocol.ValidatingDataPlane` lists it in ``GET /v2/models/NAME``.

With a :class:`serving.collect.Collector`, every answered request is offered to it (it samples, queues and
writes off the request path); ``stop()``, which KServe calls when SIGTERM stops the server, flushes it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kserve import InferInput, InferRequest, InferResponse, Model
from kserve.metrics import POST_HIST_TIME, PRE_HIST_TIME, PREDICT_HIST_TIME, get_labels
from kserve.protocol.infer_type import to_http_parameters

from components.imagefile import MAX_IMAGE_PIXELS
from components.modelfile import MANIFEST_FILE, ModelCard, load_card, sha256_file, verify_manifest
from components.registry import materialize, split_pinned
from components.runtimes import AUTO, PLATFORMS, Runtime, decide_runtime, load_runtime
from serving.batching import Batcher, BatchingOptions
from serving.codec import (
    BYTES_INPUT,
    Batch,
    ServingSpec,
    Tensor,
    check_requested_outputs,
    decode_v1,
    decode_v2,
    encode_v1,
    encode_v2,
    has_encoded_images,
    input_types,
    output_types,
    v2_json,
    v2_outputs,
)
from serving.collect import Collector
from serving.protocol import PlainHeader, binary_values

logger = logging.getLogger(__name__)
DEFAULT_MAX_INSTANCES = 64
VERSION_HEADER = "x-model-version"


class ImageClassifier(Model):
    def __init__(self, name: str, model_uri: str, max_instances: int = DEFAULT_MAX_INSTANCES, batching: BatchingOptions | None = None,
                 max_request_pixels: int = MAX_IMAGE_PIXELS, decode_threads: int = 1, collector: Collector | None = None,
                 runtime: str = AUTO, threads: int | None = None):
        # With response headers, KServe hands predict() the dict its HTTP answer's headers come from.
        super().__init__(name, return_response_headers=True)
        self.model_uri = model_uri
        self.max_instances = max_instances
        self.max_request_pixels = max_request_pixels
        # Its own small pool, sized from the CPU limit: image decoding is CPU- and memory-heavy, and KServe's
        # default pool (up to 32 threads) would run as many decodes at once as it has threads.
        self.decode_pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix=f"{name}-decode")
        self.batching = batching or BatchingOptions()
        self.requested_runtime = runtime  # auto, torch or onnx (components.runtimes.decide_runtime)
        self.threads = threads or torch.get_num_threads()  # compute threads of either runtime
        self.runtime: Runtime | None = None
        self.card: ModelCard | None = None
        self.spec: ServingSpec | None = None
        self.batcher: Batcher | None = None
        self.manifest: dict[str, Any] = {}
        self.collector = collector  # None: collection off
        self._stage_seconds = StageSeconds.bound(name)

    def load(self) -> bool:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with tempfile.TemporaryDirectory(prefix="model-") as scratch:
            # A pinned URI must find exactly that manifest (materialize refuses any other).
            folder = materialize(self.model_uri, Path(scratch))
            # Refuse to serve anything whose files do not match the manifest (raises, names the file).
            self.manifest = verify_manifest(folder)
            digest = sha256_file(folder / MANIFEST_FILE)
            self.card = load_card(folder)
            choice = decide_runtime(self.requested_runtime, self.manifest, device)  # refuses onnx on a version without an export
            self.runtime = load_runtime(folder, self.card, choice.runtime, device, self.threads)
        self.spec = ServingSpec.from_card(self.card, self.max_instances, self.max_request_pixels)
        self.forward(np.zeros((1, *self.card.input_shape), dtype=np.float32))  # a model that cannot run is not ready
        self.batcher = Batcher(self.forward, self.batching, self.name)
        logger.info("%s; %s on %s, runtime %s (%s); batching %s", load_summary(self.name, self.model_uri, self.manifest, digest),
                    self.card.arch, device, choice.runtime, choice.reason, self.batching)
        self.ready = True
        return self.ready

    @property
    def version(self) -> str | None:
        """The registry version served, as ``MANIFEST.json`` names it; None before ``load`` or for a folder
        that was never registered (its manifest names no version)."""
        version = self.manifest.get("version")
        return None if version is None else str(version)

    def stop(self) -> None:
        # KServe's signal handler unloads the model (calling this) once uvicorn has finished the requests in
        # flight: every answered request has been offered by then, and close() writes what is still queued.
        if self.collector is not None:
            self.collector.close()
        if self.batcher is not None:
            self.batcher.close()
        if self.runtime is not None:
            self.runtime.close()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        super().stop()

    def get_input_types(self) -> list[dict]:
        return input_types(self.spec)

    def get_output_types(self) -> list[dict]:
        return output_types(self.spec)

    @property
    def platform(self) -> str:
        """The runtime served, as the Open Inference Protocol's model metadata names it ("" before ``load``)."""
        return PLATFORMS[self.runtime.name] if self.runtime is not None else ""

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for ``float32 [N,C,H,W]`` pixels (runs on the batcher's worker thread)."""
        return self.runtime.forward(pixels)

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        if response_headers is not None and self.version is not None:
            response_headers[VERSION_HEADER] = self.version
        if isinstance(payload, InferRequest):
            return await self._infer_v2(payload)
        return await self._predict_v1(payload)

    async def answer_direct(self, request: dict | PlainHeader) -> tuple[dict, dict[str, str]]:
        """The answer and response headers for a plain request, as ``predict`` through KServe's ``DataPlane.infer``
        and ``Model.__call__`` gives them, without that machinery (:mod:`serving.routes` calls this for a v1 body
        and for a v2 JSON body of the usual shape): the same decoding, batcher, collection and outputs, no
        ``InferRequest``/``InferResponse`` objects. KServe's three stage histograms are observed as
        ``Model.__call__`` observes them: this model's pre- and postprocessing are the identity (decoding and
        encoding are part of predict on both paths), so those two observe 0; a refused request counts in the first
        two, as there."""
        self._stage_seconds.preprocess.observe(0.0)
        started = time.perf_counter()
        try:
            if isinstance(request, PlainHeader):
                answer = await self._infer_plain(request)
            else:
                answer = await self._predict_v1(request)
        finally:
            self._stage_seconds.predict.observe(time.perf_counter() - started)
        self._stage_seconds.postprocess.observe(0.0)
        return answer, ({} if self.version is None else {VERSION_HEADER: self.version})

    async def _predict_v1(self, payload: Any) -> dict:
        batch = await self._decode(decode_v1, has_encoded_images(payload), payload, self.spec)
        probs = await self.batcher.run(batch.pixels)
        self._collect(batch, probs, None)
        return encode_v1(probs, self.spec, batch.top_k)

    async def _decode(self, decode: Callable[..., Batch], images: bool, *args: Any) -> Batch:
        """Pixel lists decode in microseconds: on the event loop. Image files take milliseconds of PIL work,
        which releases the GIL: on the decode pool, so the loop keeps serving meanwhile. Meanwhile the batcher
        knows this request is on its way."""
        with self.batcher.arriving():
            if not images:
                return decode(*args)
            return await asyncio.get_running_loop().run_in_executor(self.decode_pool, decode, *args)

    async def _infer_v2(self, request: InferRequest) -> InferResponse:
        tensors = [Tensor(t.name, t.datatype, list(t.shape), _tensor_data(t)) for t in request.inputs]
        # gRPC parameters arrive as a protobuf map (empty when none were sent).
        parameters = to_http_parameters(request.parameters) if request.from_grpc else request.parameters
        requested = [o.name for o in request.request_outputs or ()]
        batch, probs, response_id = await self._run_v2(tensors, parameters, requested, request.id)
        return InferResponse(
            response_id=response_id,
            model_name=self.name,
            model_version=self.version,
            infer_outputs=encode_v2(probs, self.spec, batch.top_k),
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )

    async def _infer_plain(self, request: PlainHeader) -> dict:
        """``_infer_v2`` for a plain JSON request (no parameters, no requested outputs): the v2 answer as the dict
        :func:`serving.routes.plain_json` makes of ``_infer_v2``'s ``InferResponse``."""
        # KServe's InferInput upper-cases the datatype: so does this path.
        tensors = [Tensor(t.name, t.datatype.upper(), t.shape, t.data) for t in request.inputs]
        batch, probs, response_id = await self._run_v2(tensors, None, [], request.id)
        return v2_json(response_id, self.name, self.version, v2_outputs(probs, self.spec, batch.top_k))

    async def _run_v2(self, tensors: list[Tensor], parameters: Any, requested: list[str],
                      request_id: str | None) -> tuple[Batch, np.ndarray, str]:
        """Decode, forward (batched) and collect a v2 request; its batch, probabilities and the id it is answered under."""
        batch: Batch = await self._decode(decode_v2, any(t.name == BYTES_INPUT for t in tensors), tensors, parameters, self.spec)
        check_requested_outputs(requested, batch.top_k)
        probs = await self.batcher.run(batch.pixels)
        response_id = request_id or new_request_id()
        self._collect(batch, probs, response_id)  # recorded under the id the client gets back
        return batch, probs, response_id

    def _collect(self, batch: Batch, probs: np.ndarray, request_id: str | None) -> None:
        """Offer the answered request to the collector (samples and queues in microseconds; never raises)."""
        if self.collector is not None:
            # v1 carries no id: one is made up. Request headers (x-request-id included) are never recorded.
            self.collector.offer(batch.pixels, probs, request_id or new_request_id(), self.version, self.spec.class_names, batch.sent)


@dataclass(frozen=True)
class StageSeconds:
    """KServe's per-stage latency histograms (``request_preprocess_seconds`` …), bound to one model's label once."""

    preprocess: Any
    predict: Any
    postprocess: Any

    @classmethod
    def bound(cls, model_name: str) -> StageSeconds:
        labels = get_labels(model_name)
        return cls(PRE_HIST_TIME.labels(**labels), PREDICT_HIST_TIME.labels(**labels), POST_HIST_TIME.labels(**labels))


class _RequestIds:
    """Ids for requests that came without one: a random 64-bit prefix per process, then a counter. Unique across
    processes and replicas like a uuid4, at a fraction of its cost (uuid4 reads the OS's random source per call).
    A forked child draws its own prefix."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix, self.counter = secrets.token_hex(8), itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}-{next(self.counter)}"


new_request_id = _RequestIds()


def load_summary(name: str, model_uri: str, manifest: dict[str, Any], digest: str) -> str:
    """The load log line an operator checks: which version, from where, which manifest, what was verified."""
    base, pinned = split_pinned(model_uri)
    pin = "matches the digest pinned in the model URI" if pinned else "unpinned: the model URI carries no digest"
    return (f"loaded {name} version {manifest.get('version')} from {base}: {MANIFEST_FILE} sha256 {digest} ({pin}), "
            f"SHA-256 of all {len(manifest['files'])} files verified against it")


def _tensor_data(tensor: InferInput) -> Any:
    """The tensor's values as sent: JSON or binary (REST, already split by serving.protocol), or the raw
    contents of a gRPC request, which KServe keeps only in a private field (``data`` is then empty)."""
    if tensor._raw_data is None:
        return tensor.data
    return binary_values(tensor._raw_data, tensor.datatype, tensor.name)
