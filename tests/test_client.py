"""The CLI client (``python -m serving.client``) against real predictor processes over HTTP.

The shared ``predictor`` serves one model, ``digits``, as ``make run``'s does. A second server here serves
two models of one registry version pushed to a store (version 2, so the number the predictor reports is
read from the registry's manifest, not a default).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from components.registry import Registry, pinned_uri
from components.store import open_store
from serving.client import predict_v1_images
from serving.model import VERSION_HEADER
from tests.conftest import SERVED_MODEL as MODEL
from tests.conftest import free_port, ready_server

OTHER_MODEL = "letters"
ACCEPTED = "expected PNG, JPEG or WebP image files or .npy arrays, found "
# Two ImageClassifiers in one server, started as python -m serving starts one (serving.__main__.serve).
TWO_MODELS = f"""
import sys
from serving.__main__ import build_parser, serve
from serving.model import ImageClassifier
args = build_parser().parse_args(sys.argv[1:])
models = [ImageClassifier(name, args.model_uri) for name in ({MODEL!r}, {OTHER_MODEL!r})]
for model in models:
    model.load()
serve(models, args)
"""


def image_file(path: Path, fmt: str = "PNG", seed: int = 0) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, fmt)
    path.write_bytes(buffer.getvalue())
    return path


def run_client(url: str, *arguments: str | Path) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "PREDICTOR_TOKEN"}
    return subprocess.run([sys.executable, "-m", "serving.client", "--url", url, *map(str, arguments)],
                          capture_output=True, text=True, timeout=60, env=environ)


def error_line(run: subprocess.CompletedProcess) -> str:
    """The client's one line on stderr for a refusal (and nothing else there)."""
    assert run.returncode == 1 and run.stdout == "", run
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


@pytest.fixture(scope="module")
def two_models(served_version, tmp_path_factory):
    """The URL of a server that serves ``digits`` and ``letters``, both registry version 2 of ``digits``."""
    root = tmp_path_factory.mktemp("two-models")
    registry = Registry(open_store(str(root / "store")), MODEL)
    for _ in range(2):
        version = registry.push(served_version, {})
    port, log = free_port(), root / "server.log"
    uri = pinned_uri(registry.version_uri(version), registry.manifest_sha256(version))
    command = [sys.executable, "-c", TWO_MODELS, "--model-uri", uri, "--http-port", str(port), "--enable_grpc", "false"]
    with open(log, "wb") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    with ready_server(proc, port, log) as url:
        yield url


# -- the model name -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_without_a_model_name_the_client_calls_the_servers_only_model(predictor, tmp_path, protocol):
    """What make run prints, python -m serving.client --url URL image.png, works as it stands."""
    image = image_file(tmp_path / "a.png")
    run = run_client(predictor, "--protocol", protocol, image)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert [p["class"] for p in printed] == [p["class"] for p in predict_v1_images(predictor, MODEL, [image.read_bytes()])]


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_without_a_model_name_a_server_with_several_is_one_error_line_naming_them(two_models, tmp_path, protocol):
    image = image_file(tmp_path / "a.png")
    assert error_line(run_client(two_models, "--protocol", protocol, image)) == (
        f"error: expected the server at {two_models} to serve one model (or --model NAME to choose), "
        f"found 2 models ({MODEL}, {OTHER_MODEL})")
    named = run_client(two_models, "--protocol", protocol, "--model", OTHER_MODEL, image)
    assert named.returncode == 0 and len(json.loads(named.stdout)) == 1, named.stderr


def test_a_model_name_the_server_does_not_serve_is_one_error_line_naming_those_it_does(predictor, tmp_path):
    image = image_file(tmp_path / "a.png")
    assert error_line(run_client(predictor, "--model", "classifier", image)) == (
        f"error: expected --model to name a model the server at {predictor} serves ({MODEL}), found 'classifier'")


# -- what the files hold ------------------------------------------------------------------------------------------


def test_files_are_sent_by_what_they_hold_not_by_their_name(predictor, tmp_path):
    webp = image_file(tmp_path / "a.webp", "WEBP", seed=1)
    misnamed = image_file(tmp_path / "b.npy", "JPEG", seed=2)  # a JPEG, whatever the name says
    run = run_client(predictor, webp, misnamed)
    assert run.returncode == 0, run.stderr
    expected = predict_v1_images(predictor, MODEL, [webp.read_bytes(), misnamed.read_bytes()])
    assert [p["class"] for p in json.loads(run.stdout)] == [p["class"] for p in expected]


NOT_INPUTS = [
    ("notes.txt", b"hello, world\nsecond line\n", "text (25 bytes, starting 'hello, world\\nsecond line\\n')"),
    ("empty.png", b"", "an empty (0-byte) file"),
    ("anim.png", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "14 bytes of binary data starting b'GIF89a\\x01\\x00'"),
    ("data.npy", bytes(range(256)), "256 bytes of binary data starting b'\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07'"),
]


@pytest.mark.parametrize(("name", "content", "found"), NOT_INPUTS)
def test_a_file_that_is_neither_an_image_nor_an_array_is_one_error_line_before_any_request(tmp_path, name, content, found):
    """Nothing listens at the URL: the file is refused before the client calls the server."""
    path = tmp_path / name
    path.write_bytes(content)
    image = image_file(tmp_path / "good.png")
    assert error_line(run_client(f"http://127.0.0.1:{free_port()}", image, path)) == f"error: {path}: {ACCEPTED}{found}"


def test_an_array_numpy_cannot_read_without_pickle_or_of_the_wrong_size_is_one_error_line(predictor, tmp_path):
    pickled, small = tmp_path / "pickled.npy", tmp_path / "small.npy"
    np.save(pickled, np.array([{"pixels": 1}], dtype=object), allow_pickle=True)
    np.save(small, np.zeros((3, 4)))
    assert error_line(run_client(predictor, pickled)) == (
        f"error: {pickled}: expected a .npy array of pixel values, found one numpy cannot read "
        "(Object arrays cannot be loaded when allow_pickle=False)")
    assert error_line(run_client(predictor, small)) == (
        f"error: {small}: expected a .npy array of 784 pixel values (shape [1, 28, 28]), found shape [3, 4]")


def test_an_array_of_pixels_is_sent_as_numbers(predictor, tmp_path):
    array = tmp_path / "digit.npy"
    pixels = np.random.default_rng(4).integers(0, 256, (28, 28)).astype(np.float32)
    np.save(array, pixels)
    run = run_client(predictor, "--protocol", "v2", array)
    assert run.returncode == 0, run.stderr
    reference = requests.post(f"{predictor}/v1/models/{MODEL}:predict", json={"instances": [pixels.tolist()]}, timeout=30)
    assert json.loads(run.stdout)[0]["class"] == reference.json()["predictions"][0]["class"]


# -- the version it serves ----------------------------------------------------------------------------------------


def test_a_server_reports_the_registry_version_it_loaded_for_each_model(two_models):
    for name in (MODEL, OTHER_MODEL):
        metadata = requests.get(f"{two_models}/v2/models/{name}", timeout=30).json()
        answer = requests.post(f"{two_models}/v1/models/{name}:predict", json={"instances": [[[0] * 28] * 28]}, timeout=30)
        assert metadata["versions"] == ["2"]
        assert answer.status_code == 200 and answer.headers[VERSION_HEADER] == "2"
