"""Shared fixtures: the bundled sample, a prepared data set, a model version, and (from
:mod:`tests.azurite`) the storage fixtures that run every store test against both backends.

Everything is real and local: files in ``tmp_path`` folders, processes on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from components.data.prepare import DatasetInfo
from components.data.sample import write_sample
from components.modelfile import MANIFEST_FILE, METRICS_FILE, ModelCard, build_manifest, save_model
from components.nets import build_model
from components.training.config import TrainConfig
from components.training.local import launch_local
from tests.azurite import azurite, store_uri  # noqa: F401  (the storage fixtures; pytest finds fixtures by name)
from tests.helpers import prepare_at
from tests.monitoring_data import held_out, pushed  # noqa: F401  (the monitoring fixtures, found by name)


@pytest.fixture(scope="session")
def sample_uri(tmp_path_factory) -> str:
    return write_sample(str(tmp_path_factory.mktemp("raw") / "digits"))


@pytest.fixture(scope="session")
def prepared(sample_uri, tmp_path_factory) -> DatasetInfo:
    # Small shards (6 for the training split), so every test that trains or evaluates streams several of them.
    return prepare_at(sample_uri, str(tmp_path_factory.mktemp("store")), seed=0, shard_bytes=200_000)


def base_config(prepared: DatasetInfo, name: str, **overrides) -> TrainConfig:
    """The training tests' run of the small CNN on the prepared digits: 2 epochs, 2 parameter servers, 2 workers."""
    return TrainConfig(store_uri=prepared.store_uri, dataset_prefix=prepared.prefix, output_prefix=f"runs/{name}/model",
                       epochs=2, num_ps=2, num_workers=2, **overrides)


@pytest.fixture(scope="session")
def uninterrupted(prepared) -> tuple[TrainConfig, str]:
    """One training run with no faults, through the local launcher, and its ranks' output: a test of its own and the
    fault tests' reference in tests/test_training_runs.py, and the trained model of the ONNX tests. Tests only read it."""
    cfg = base_config(prepared, "uninterrupted")
    out = io.StringIO()
    launch_local(cfg, timeout_s=240, out=out)
    return cfg, out.getvalue()


def make_version_folder(folder: Path, seed: int = 0, card: ModelCard | None = None) -> Path:
    """A complete model-version folder (weights, card, metrics, manifest) with seeded random weights."""
    card = card or ModelCard("small_cnn", 1, 28, 28, [str(d) for d in range(10)], [0.15], [0.28])
    torch.manual_seed(seed)
    save_model(folder, build_model(card.arch, card.in_channels, card.num_classes), card)
    (folder / METRICS_FILE).write_text(json.dumps({"accuracy": 0.5}))
    (folder / MANIFEST_FILE).write_text(json.dumps(build_manifest(folder, {"version": 1})))
    return folder


@pytest.fixture
def version_folder(tmp_path) -> Path:
    return make_version_folder(tmp_path / "version")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """``count`` different free ports, for servers that start side by side: bound at once, so none repeats."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


SERVED_MODEL = "digits"
# The shared test server: small limits so the limit tests are cheap, and a batching wait long enough
# that concurrent test requests coalesce.
SERVER_OPTIONS = ("--max-instances", "8", "--max-body-mb", "1", "--max-batch-size", "32", "--max-batch-wait-ms", "50")


def start_predictor(model_uri: str, port: int, *options: str, log: Path | None = None) -> subprocess.Popen:
    """``python -m serving`` as a real process on 127.0.0.1 (gRPC off). Its output goes to ``log``, or to
    a pipe the caller must drain (a long-running server would block once an undrained pipe fills)."""
    # One server process unless a test asks for more (a later --workers wins; tests/test_serving_workers.py):
    # every process imports torch and loads the model, which a test serving a handful of requests only waits for.
    command = [sys.executable, "-m", "serving", "--model-uri", model_uri, "--model-name", SERVED_MODEL, "--http-port", str(port),
               "--enable_grpc", "false", "--workers", "1", *options]
    if log is None:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with open(log, "wb") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 90) -> None:
    from serving.client import is_ready

    deadline = time.monotonic() + timeout_s
    while not is_ready(url, SERVED_MODEL):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


@contextmanager
def ready_server(proc: subprocess.Popen, port: int, log: Path) -> Iterator[str]:
    """The base URL of a started predictor, once it is ready; the process is stopped on leaving."""
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def served_version(tmp_path_factory) -> Path:
    return make_version_folder(tmp_path_factory.mktemp("served") / "v1")


@pytest.fixture(scope="session")
def predictor_ports() -> tuple[int, int]:
    """(HTTP, gRPC) ports of the shared predictor."""
    return free_port(), free_port()


@pytest.fixture(scope="session")
def predictor_grpc(predictor, predictor_ports) -> str:
    """host:port of the shared predictor's gRPC (Open Inference Protocol) endpoint."""
    return f"127.0.0.1:{predictor_ports[1]}"


@pytest.fixture(scope="session")
def predictor(served_version, predictor_ports) -> str:
    """The base URL of one predictor process shared by the serving tests; stopped at the end."""
    (port, grpc_port), log = predictor_ports, served_version.parent / "server.log"
    proc = start_predictor(str(served_version), port, *SERVER_OPTIONS, "--enable_grpc", "true", "--grpc-port", str(grpc_port), log=log)
    with ready_server(proc, port, log) as url:
        yield url
