"""The cheaper request path keeps what it replaced: the same v2 JSON answer, the same access log line."""

from __future__ import annotations

import io
import logging

import numpy as np
import orjson
from kserve import InferResponse
from kserve.logging import KSERVE_LOG_CONFIG
from kserve.protocol.infer_type import RequestedOutput
from uvicorn.logging import AccessFormatter

from serving.access_log import AccessLineFormatter, BatchedStreamHandler
from serving.codec import ServingSpec, encode_v2
from serving.routes import plain_binary, plain_json

SPEC = ServingSpec(1, 28, 28, tuple(str(i) for i in range(10)), 8)


def response(top_k: int | None = None) -> InferResponse:
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=3).astype(np.float32)
    return InferResponse(response_id="r-1", model_name="digits", model_version="4", infer_outputs=encode_v2(probs, SPEC, top_k))


def test_a_v2_answer_is_written_byte_for_byte_as_kserves_encoder_writes_it():
    for top_k in (None, 3):
        ours = orjson.dumps(plain_json(response(top_k), {"content-type": "application/json"}))
        kserves, _ = response(top_k).to_rest()
        assert ours == orjson.dumps(kserves)


def test_a_binary_v2_answer_is_written_byte_for_byte_as_kserves_encoder_writes_it():
    for top_k in (None, 3):
        ours, theirs = response(top_k), response(top_k)
        ours._use_binary_outputs = theirs._use_binary_outputs = True
        assert plain_json(ours, {}) is None
        assert plain_binary(ours, {}) == theirs.to_rest()


def test_requested_outputs_or_cloudevent_answers_are_left_to_kserves_encoder():
    requested = response()
    requested._requested_outputs = [RequestedOutput("class")]
    assert plain_json(requested, {}) is None and plain_binary(requested, {}) is None
    assert plain_json(response(), {"ce-id": "1"}) is None
    assert plain_json({"predictions": []}, {}) is None  # v1


def access_record(status: int = 200) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:5000", "POST", "/v2/models/digits/infer", "1.1", status), None)


def test_the_access_line_is_the_one_kserves_configuration_writes():
    config = KSERVE_LOG_CONFIG["formatters"]["uvicorn_access"]
    kserves = AccessFormatter(fmt=config["fmt"], datefmt=config["datefmt"], use_colors=False)
    ours = AccessLineFormatter(kserves)
    for status in (200, 404, 503):
        record = access_record(status)
        assert ours.format(record) == kserves.format(record)


class CountingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_access_lines_are_flushed_once_per_interval_not_once_per_line_and_all_on_close():
    stream = CountingStream()
    handler = BatchedStreamHandler(stream, interval_s=3600)  # the interval does not pass during the test
    handler.setFormatter(logging.Formatter("%(message)s"))
    for _ in range(100):
        handler.handle(logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "line", None, None))
    assert stream.flushes == 0
    handler.close()  # what logging.shutdown does at exit
    assert stream.flushes == 1 and stream.getvalue() == "line\n" * 100
