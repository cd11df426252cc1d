"""The cheaper request path keeps what it replaced: the same v2 JSON answer, the same access log line."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import orjson
import pytest
from kserve import InferResponse
from kserve.errors import InvalidInput
from kserve.logging import KSERVE_LOG_CONFIG
from kserve.protocol.infer_type import RequestedOutput
from uvicorn.logging import AccessFormatter

from serving import access_log, protocol
from serving.access_log import AccessLineFormatter, BatchedStreamHandler
from serving.codec import ServingSpec, Tensor, decode_pixel_tensor, encode_v2
from serving.model import new_request_id
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


def cheap_handler(stream: io.StringIO) -> BatchedStreamHandler:
    """The handler and formatter make_cheap puts in place of KServe's."""
    config = KSERVE_LOG_CONFIG["formatters"]["uvicorn_access"]
    handler = BatchedStreamHandler(stream, interval_s=3600)
    handler.setFormatter(AccessLineFormatter(AccessFormatter(fmt=config["fmt"], datefmt=config["datefmt"], use_colors=False)))
    return handler


def test_the_direct_access_logger_writes_the_line_the_logging_machinery_writes(monkeypatch):
    via_records, direct = io.StringIO(), io.StringIO()
    record = access_record(404)
    cheap_handler(via_records).handle(record)
    monkeypatch.setattr(access_log.time, "time", lambda: record.created)  # the same moment, to the millisecond
    logger = logging.getLogger("test.direct-access")
    logger.setLevel(logging.INFO)
    handler = cheap_handler(direct)
    writer = access_log.DirectAccessLogger(logger, handler)
    writer.process = record.process
    writer.info(record.msg, *record.args)
    handler.close()
    assert direct.getvalue() == via_records.getvalue() and " 404 Not Found\n" in direct.getvalue()
    logger.setLevel(logging.WARNING)  # the logger's level still decides
    writer.info(record.msg, *record.args)
    assert direct.getvalue() == via_records.getvalue()


def test_the_direct_access_logger_is_used_only_where_nothing_else_would_see_the_record(monkeypatch):
    access = logging.getLogger(access_log.ACCESS_LOGGER)
    monkeypatch.setattr(access, "handlers", [cheap_handler(io.StringIO())])
    monkeypatch.setattr(access, "filters", [])
    monkeypatch.setattr(access, "propagate", False)
    assert isinstance(access_log.direct_logger(), access_log.DirectAccessLogger)
    monkeypatch.setattr(access, "propagate", True)  # a parent's handlers would see it too
    assert access_log.direct_logger() is None
    monkeypatch.setattr(access, "propagate", False)
    monkeypatch.setattr(access, "handlers", [logging.StreamHandler(io.StringIO())])  # an operator's own configuration
    assert access_log.direct_logger() is None


def _outcome(body: bytes) -> str:
    """What parse_infer_body makes of ``body``, as text (so NaN data compares equal to itself)."""
    try:
        request = protocol.parse_infer_body(body, None, "digits")
    except InvalidInput as exc:
        return f"refused: {exc}"
    inputs = [(i.name, i.shape, i.datatype, i.data, i.parameters) for i in request.inputs]
    outputs = [(o.name, o.parameters) for o in request.request_outputs or ()]
    return f"accepted: {request.id!r} {inputs!r} {request.parameters!r} {outputs!r}"


PIXELS = {"name": "images", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [0, 255.0, 3, 4]}
BODIES = [
    {"inputs": [PIXELS]},  # the common request: the fast path
    {"id": "r-7", "inputs": [PIXELS, {**PIXELS, "name": "other"}]},
    {"inputs": []},
    {"id": None, "inputs": [PIXELS]},  # from here on, pydantic decides
    {"id": 7, "inputs": [PIXELS]},
    {"inputs": [{**PIXELS, "shape": [1, True, 2, 2]}]},
    {"inputs": [{**PIXELS, "shape": [1, 1.0, 2, 2]}]},
    {"inputs": [{**PIXELS, "name": 3}]},
    {"inputs": [{**PIXELS, "data": "1,2,3,4"}]},
    {"inputs": [{**PIXELS, "parameters": {"content_type": "np"}}]},
    {"inputs": [PIXELS], "parameters": {"top_k": 3}},
    {"inputs": [PIXELS], "outputs": [{"name": "probabilities"}]},
    {"inputs": [{k: v for k, v in PIXELS.items() if k != "shape"}]},
    {"inputs": PIXELS},
    {"input": [PIXELS]},
    [PIXELS],
]
RAW_BODIES = [b'{"inputs": [', b"", b"\xff\xfe", b'{"inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "data": [NaN]}]}',
              b'{"inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "data": [1e999]}]}']
# The one difference: orjson reads an integer beyond 64 bits as a float, pydantic as an int. Either is then
# refused by the pixel checks (out of 0–255; an int too large for numpy is not a number it can hold).
HUGE = b'{"inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "data": [123456789012345678901234567890]}]}'


def test_the_v2_header_fast_path_accepts_and_refuses_exactly_what_pydantics_validation_does(monkeypatch):
    """protocol.plain_header skips pydantic for the common request: every body here has the same outcome, the
    same request or the same error message, with it and without it."""
    bodies = [orjson.dumps(b) for b in BODIES] + RAW_BODIES
    fast = [_outcome(body) for body in bodies]
    assert protocol.plain_header(bodies[0]) is not None and protocol.plain_header(bodies[3]) is None  # both paths are taken
    monkeypatch.setattr(protocol, "plain_header", lambda text: None)
    assert [_outcome(body) for body in bodies] == fast
    assert fast[0].startswith("accepted") and fast[4].startswith("refused")  # not all alike: the comparison can tell them apart


def test_an_integer_beyond_64_bits_is_read_as_a_float_by_the_fast_path_and_refused_as_pixels_either_way():
    assert "[1.2345678901234568e+29]" in _outcome(HUGE)
    with pytest.raises(InvalidInput, match="0–255"):
        decode_pixel_tensor(Tensor("images", "FP32", [1, 1, 1, 1], [1.2345678901234568e29]), ServingSpec(1, 1, 1, ("a",), 8))
    with pytest.raises(InvalidInput, match="non-numeric|object"):
        decode_pixel_tensor(Tensor("images", "FP32", [1, 1, 1, 1], [123456789012345678901234567890]), ServingSpec(1, 1, 1, ("a",), 8))


def test_request_ids_are_unique_and_a_forked_process_draws_its_own_prefix():
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, through the pipe
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    assert child.split("-")[0] != ids[0].split("-")[0] and child.endswith("-1")  # its own prefix, its own count
