"""Azurite (the Azure Storage emulator, real Blob REST API) for the storage tests, and the two store backends.

``make setup`` installs Azurite from the npm registry into ``node_modules/`` (``npm ci``, pinned in
``package-lock.json``). The session fixture :func:`azurite` starts ``azurite-blob`` on a free loopback port
with a fresh account key and a temporary folder, and stops it at the end. A missing binary fails the tests
that need it, saying to run ``make setup``; ``SKIP_AZURITE=1`` skips them instead.

:func:`store_uri` gives each test a fresh, empty store on each backend: a folder (``local``) and an Azurite
container (``blob``), with ``AZURE_STORAGE_CONNECTION_STRING`` set so ``open_store`` (and child processes)
open it exactly as the pipeline does.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.blob_store import CONNECTION_STRING_ENV, BlobSettings, BlobStore
from components.errors import StoreError

REPO_ROOT = Path(__file__).resolve().parents[1]
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
LISTENING = re.compile(r"listens on http://127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 60.0  # a guard against a hung start, not a performance expectation


@dataclass(frozen=True)
class Azurite:
    """A running Azurite blob service: its endpoint and the (test-only, random) account key."""

    endpoint: str
    account_key: str

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={self.account_key};"
            f"BlobEndpoint={self.endpoint};"
        )

    def store_uri(self, container: str, prefix: str = "") -> str:
        """The store URI of ``container`` (and ``prefix``) on this Azurite."""
        return f"{self.endpoint}/{container}" + (f"/{prefix}" if prefix else "")

    def new_container(self, prefix: str = "") -> str:
        """Create a fresh, uniquely named container; return its store URI."""
        uri = self.store_uri(f"test-{uuid.uuid4().hex[:16]}", prefix)
        BlobStore.from_uri(uri, environ={CONNECTION_STRING_ENV: self.connection_string}).ensure_container()
        return uri


def start_azurite(workdir: Path, account_key: str) -> tuple[subprocess.Popen, int]:
    """Start ``azurite-blob`` on a free loopback port (port 0: the OS picks); return the process and port."""
    log = workdir / "azurite.log"
    command = [
        str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", str(workdir / "data"),
        "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent",
    ]
    env = {**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{account_key}"}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, wait_for_port(process, log)


def wait_for_port(process: subprocess.Popen, log: Path) -> int:
    """The port Azurite reports once it listens; fail with its log if it exits or never gets there."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if found := LISTENING.search(log.read_text(errors="replace")):
            return int(found.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"expected Azurite to listen on a loopback port, it did not; its log:\n{log.read_text()[-2000:]}", pytrace=False)


def check_answers(azurite: Azurite) -> None:
    """Make one real Blob request (create a container), with quick retries; fail the session if it errs."""
    quick = BlobSettings(retry_total=5, initial_backoff=0.2, increment_base=1.5, jitter=0.1)
    store = BlobStore.from_uri(azurite.store_uri("probe"), quick, {CONNECTION_STRING_ENV: azurite.connection_string})
    try:
        store.ensure_container()
    except StoreError as exc:
        pytest.fail(f"expected Azurite at {azurite.endpoint} to answer, it did not: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A running Azurite for the whole session (fails, not skips, when it is not installed)."""
    if os.environ.get("SKIP_AZURITE") == "1":
        pytest.skip("SKIP_AZURITE=1: the Blob tests against Azurite are skipped")
    if not AZURITE_BIN.exists():
        pytest.fail(f"expected Azurite at {AZURITE_BIN}, found nothing: run `make setup` (it runs `npm ci`)", pytrace=False)
    workdir = tmp_path_factory.mktemp("azurite")
    account_key = base64.b64encode(os.urandom(64)).decode()
    process, port = start_azurite(workdir, account_key)
    try:
        emulator = Azurite(f"http://127.0.0.1:{port}/{ACCOUNT}", account_key)
        check_answers(emulator)
        yield emulator
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(params=["local", "blob"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty store on each backend; Blob's connection string is in the environment."""
    if request.param == "local":
        return str(tmp_path / "store")
    emulator: Azurite = request.getfixturevalue("azurite")
    monkeypatch.setenv(CONNECTION_STRING_ENV, emulator.connection_string)
    return emulator.new_container()
