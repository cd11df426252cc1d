"""Serving hardening (issue 18): what a hostile client can do to the predictor, over real HTTP and gRPC.

gRPC is off unless asked for and cannot unload the model; the server listens on 127.0.0.1 unless told
otherwise; headers are capped in size and count; a request that is not sent in full is closed; a
request's images are budgeted in decoded pixels from their headers, before any pixel is decoded;
a length header with a non-ASCII digit is a 400; the CLI client takes its token from a file or the
environment, never from the command line.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import grpc
import orjson
import psutil
import pytest
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from PIL import Image

from tests.conftest import SERVED_MODEL as MODEL
from tests.conftest import free_port, wait_ready

# The hardened test server's limits: small, so each limit is cheap to reach.
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 20
REQUEST_TIMEOUT_S = 1
MAX_REQUEST_PIXELS = 20_000
NEVER_S = 30  # how long a test waits for something that must happen after about a second


def serve(model_uri: str, port: int, log: Path, *options: str) -> subprocess.Popen:
    """``python -m serving`` with only the options given (the server's own defaults otherwise)."""
    # One process unless a test asks for more (as tests/conftest.py start_predictor).
    command = [sys.executable, "-m", "serving", "--model-uri", model_uri, "--model-name", MODEL, "--http-port", str(port),
               "--workers", "1", *options]
    with open(log, "wb") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def hardened(served_version, tmp_path_factory):
    """(url, gRPC address, process) of a server with gRPC asked for and small limits."""
    port, grpc_port, log = free_port(), free_port(), tmp_path_factory.mktemp("hardened") / "server.log"
    proc = serve(str(served_version), port, log, "--enable_grpc", "true", "--grpc-port", str(grpc_port),
                 "--max-header-bytes", str(MAX_HEADER_BYTES), "--max-headers", str(MAX_HEADERS),
                 "--request-timeout-s", str(REQUEST_TIMEOUT_S), "--timeout-keep-alive", str(REQUEST_TIMEOUT_S),
                 "--max-request-pixels", str(MAX_REQUEST_PIXELS))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        yield url, f"127.0.0.1:{grpc_port}", proc
    finally:
        stop(proc)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=NEVER_S)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def refused_port(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def other_address() -> str | None:
    """An address of this machine that is not loopback (None where there is none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


# -- 1, 2: gRPC off unless asked for, no repository over gRPC, loopback unless told otherwise ------------------------------


def test_by_default_grpc_is_off_and_http_listens_on_loopback_only(served_version, tmp_path):
    port, grpc_port = free_port(), free_port()
    proc = serve(str(served_version), port, tmp_path / "server.log", "--grpc-port", str(grpc_port))
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", tmp_path / "server.log")
        assert refused_port("127.0.0.1", grpc_port), "gRPC is listening though nobody asked for it"
        address = other_address()
        if address is not None:
            assert refused_port(address, port), f"HTTP answers on {address}, not only on 127.0.0.1"
    finally:
        stop(proc)


def test_listen_address_opens_http_and_grpc_on_that_address(served_version, tmp_path):
    address = other_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    port, grpc_port, log = free_port(), free_port(), tmp_path / "server.log"
    proc = serve(str(served_version), port, log, "--listen-address", "0.0.0.0", "--enable_grpc", "true", "--grpc-port", str(grpc_port))
    try:
        wait_ready(proc, f"http://{address}:{port}", log)
        with grpc.insecure_channel(f"{address}:{grpc_port}") as channel:
            assert GRPCInferenceServiceStub(channel).ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=NEVER_S).ready
    finally:
        stop(proc)


def test_grpc_cannot_load_or_unload_the_model_and_it_stays_ready(hardened):
    url, grpc_address, _ = hardened
    with grpc.insecure_channel(grpc_address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        for call, request in ((stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=MODEL)),
                              (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=MODEL))):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=NEVER_S)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert refused.value.details() == "model repository operations are disabled: this server serves one verified model version"
        assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=NEVER_S).ready
    assert requests.get(f"{url}/v2/models/{MODEL}/ready", timeout=NEVER_S).status_code == 200
    body = {"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    assert requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=NEVER_S).status_code == 200


# -- 3: header limits and timeouts ---------------------------------------------------------------------------------


def send_huge_header(url: str, size: int) -> bytes:
    """Send a request whose one header is ``size`` bytes; return what the server answered (maybe nothing)."""
    sock = connect(url)
    sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: test\r\nX-Big: ")
    chunk = b"a" * (1 << 20)
    try:
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)
        sock.sendall(b"\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed on us mid-header: what a server should do
    try:
        return read_all(sock)
    except ConnectionResetError:
        return b""
    finally:
        sock.close()


def test_64_mib_headers_are_refused_and_memory_stays_flat(hardened):
    url, _, proc = hardened
    server = psutil.Process(proc.pid)
    before = server.memory_info().rss
    answers = [send_huge_header(url, 64 << 20) for _ in range(4)]
    grown_mib = (server.memory_info().rss - before) / (1 << 20)
    for answer in answers:
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert any(answer.startswith(b"HTTP/1.1 431") for answer in answers)
    assert f"expected request headers of at most {MAX_HEADER_BYTES} bytes".encode() in b"".join(answers)
    assert grown_mib < 64, f"the server grew by {grown_mib:.0f} MiB"
    assert requests.get(f"{url}/v2/models/{MODEL}/ready", timeout=NEVER_S).status_code == 200


def test_too_many_headers_are_refused_with_431(hardened):
    url, _, _ = hardened
    headers = {f"X-H{i}": "1" for i in range(MAX_HEADERS + 1)}
    response = requests.get(f"{url}/v2/health/ready", headers=headers, timeout=NEVER_S)
    assert response.status_code == 431
    assert response.json()["error"].startswith(f"expected at most {MAX_HEADERS} request headers, found more")
    assert requests.get(f"{url}/v2/health/ready", headers=dict(list(headers.items())[:5]), timeout=NEVER_S).status_code == 200


@pytest.mark.parametrize("sent", [
    b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: test\r\n",  # headers never finished
    b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n{\"instances\": [",  # body never finished
])
def test_a_half_sent_request_is_answered_408_and_closed(hardened, sent):
    url, _, _ = hardened
    sock = connect(url)
    try:
        sock.sendall(sent)
        answer = read_all(sock)  # returns only once the server closes the connection
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert f"expected the whole request within {REQUEST_TIMEOUT_S} s".encode() in answer


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(hardened):
    url, _, _ = hardened
    for used in (False, True):
        sock = connect(url)
        try:
            if used:  # idle after a first request, and idle from the start
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = read_all(sock)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 200") if used else answer == b""


def until_served(url: str) -> int:
    """The first status other than 503 (the server notices a closed connection in its own time)."""
    deadline = time.monotonic() + NEVER_S
    while (status := requests.get(url, timeout=NEVER_S).status_code) == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    return status


def test_a_request_beyond_the_connection_limit_is_503_until_one_closes(served_version, tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    proc = serve(str(served_version), port, log, "--max-connections", "2", "--workers", "1")  # counted in one process
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        held = [connect(url) for _ in range(2)]
        for sock in held:  # one answered request each: the server has surely registered the connection
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        refused = requests.get(f"{url}/v2/health/live", timeout=NEVER_S)
        assert refused.status_code == 503
        assert refused.json()["error"] == "expected at most 2 connections or requests in progress, found 3: retry later"
        held.pop().close()
        assert until_served(f"{url}/v2/health/live") == 200
        held.pop().close()
    finally:
        stop(proc)


# -- 4: the decoded-pixel budget ------------------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 9).save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` and holds one row of pixels: refused from its header, or it fails to decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b"")


def b64_instances(images: list[bytes]) -> dict:
    import base64

    return {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}


def test_a_request_within_the_pixel_budget_is_served(hardened):
    url, _, _ = hardened
    response = requests.post(f"{url}/v1/models/{MODEL}:predict", json=b64_instances([png(100, 100), png(100, 100)]), timeout=NEVER_S)
    assert response.status_code == 200, response.text


def test_images_over_the_request_pixel_budget_are_refused_from_their_headers(hardened):
    url, _, _ = hardened
    over = [png(100, 100), png(100, 100), png(10, 10)]
    response = requests.post(f"{url}/v1/models/{MODEL}:predict", json=b64_instances(over), timeout=NEVER_S)
    assert response.status_code == 400
    assert response.json()["error"] == (f"expected at most {MAX_REQUEST_PIXELS:,} decoded pixels per request, "
                                         "found 20,100 in 3 images (the first over the budget: instance 2, 10x10)")
    # A header claiming 25 Mpx without a single pixel: refused for its size, not for failing to decode.
    bomb = requests.post(f"{url}/v1/models/{MODEL}:predict", json=b64_instances([png_header_only(5000, 5000)]), timeout=NEVER_S)
    assert bomb.status_code == 400 and "decoded pixels per request, found 25,000,000 in 1 images" in bomb.json()["error"]


# -- 4: the CPU limit the decode pool and torch are sized from -----------------------------------------------------


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "200000 100000\n"}, 2),
    ({"cpu.max": "150000 100000\n"}, 1),  # 1.5 CPUs: one full thread, not two that get throttled
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
])
def test_the_cpu_limit_comes_from_cgroup_v2_or_v1(tmp_path, files, expected):
    from components.cpu import cpu_limit

    assert cpu_limit(cgroup(tmp_path, files), available=8) == expected


@pytest.mark.parametrize("files", [{"cpu.max": "max 100000\n"}, {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, {}])
def test_without_a_cpu_limit_the_cpus_available_count(tmp_path, files):
    from components.cpu import cpu_limit

    assert cpu_limit(cgroup(tmp_path, files), available=8) == 8


def test_a_limit_above_the_cpus_available_is_capped(tmp_path):
    from components.cpu import cpu_limit

    assert cpu_limit(cgroup(tmp_path, {"cpu.max": "1600000 100000\n"}), available=4) == 4


# -- 5: length headers with non-ASCII digits --------------------------------------------------------------------------


def test_a_non_ascii_digit_in_the_inference_header_length_is_400(predictor):
    head = orjson.dumps({"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 3136}}]})
    # "²" (U+00B2) is a digit to str.isdigit() and not to int(); HTTP headers are Latin-1.
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "\u00b2".encode("latin-1")}
    response = requests.post(f"{predictor}/v2/models/{MODEL}/infer", data=head + b"\0" * 3136, headers=headers, timeout=NEVER_S)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == f"expected inference-header-content-length to be a byte count from 0 to {len(head) + 3136}, found '²'"


def test_a_non_ascii_digit_in_content_length_is_400(predictor):
    sock = connect(predictor)
    try:
        sock.sendall(b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: test\r\nContent-Length: \xb2\r\nConnection: close\r\n\r\n")
        answer = read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


# -- 6: the CLI client's token ------------------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """A server that lists one model and answers any prediction, recording each request's method and token."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _Recorder.seen.append(("GET", self.headers.get("Authorization")))
        self._answer({"models": [MODEL]})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.seen.append(("POST", self.headers.get("Authorization")))
        self._answer({"predictions": [{"class": 0, "label": "0", "probabilities": [1.0]}]})

    def _answer(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder():
    _Recorder.seen = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def run_client(url: str, image: Path, *options: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "PREDICTOR_TOKEN"} | (env or {})
    return subprocess.run([sys.executable, "-m", "serving.client", "--url", url, *options, str(image)],
                          capture_output=True, text=True, timeout=60, env=environ)


def test_the_client_sends_the_token_from_a_file_or_the_environment(recorder, tmp_path):
    image, token_file = tmp_path / "a.png", tmp_path / "token"
    image.write_bytes(png(28, 28))
    token_file.write_text("from-file\n")
    assert run_client(recorder, image, "--token-file", str(token_file), env={"PREDICTOR_TOKEN": "from-env"}).returncode == 0
    assert run_client(recorder, image, env={"PREDICTOR_TOKEN": "from-env"}).returncode == 0
    assert run_client(recorder, image).returncode == 0
    # Without --model the client first asks which model the server serves: with the same token.
    expected = ["Bearer from-file", "Bearer from-env", None]
    assert _Recorder.seen == [(method, token) for token in expected for method in ("GET", "POST")]


def test_the_client_refuses_a_token_on_the_command_line(recorder, tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(png(28, 28))
    run = run_client(recorder, image, "--token", "secret")
    assert run.returncode != 0 and _Recorder.seen == []
    assert run.stderr.strip().splitlines()[-1] == (
        "error: expected the token in --token-file or $PREDICTOR_TOKEN, found --token on the command line (visible to every user in ps)")
    assert "Traceback" not in run.stderr
