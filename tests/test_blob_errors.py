"""Every way a Blob request can fail without a usable answer ends as one ``error:`` line from the CLI, after
a bounded number of tries: a response cut short, a connection dropped before the answer, an endpoint where
nothing listens. The CLI runs as a real process (``python -m pipelines registry …``) against Azurite behind
the fault-injecting proxy of :mod:`tests.flaky_proxy`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.blob_store import CONNECTION_STRING_ENV, BlobSettings
from tests.azurite import Azurite
from tests.conftest import free_port
from tests.flaky_proxy import Faults, flaky_proxy
from tests.test_registry import MODEL, push_tagged

REPO_ROOT = Path(__file__).resolve().parents[1]
TRIES_AFTER_NO_ANSWER = 1 + BlobSettings().retry_read  # the first try and its retries
SDK_DOWNLOAD_TRIES = 3  # azure-storage-blob's downloader reads a body three times before it gives up


@dataclass(frozen=True)
class Proxied:
    """A registry in Azurite as seen through the flaky proxy: its store URI and the connection string to use."""

    uri: str
    connection_string: str
    faults: Faults


@pytest.fixture
def proxied(azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxied]:
    """A registry with one version in a fresh container, reached through the proxy."""
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    uri = azurite.new_container()
    push_tagged(uri, str(tmp_path), "a")
    upstream = azurite.endpoint.rsplit("/", 1)[0]
    with flaky_proxy(upstream) as (port, faults):
        proxy = f"http://127.0.0.1:{port}"
        yield Proxied(uri.replace(upstream, proxy), azurite.connection_string.replace(upstream, proxy), faults)


def registry_cli(connection_string: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m pipelines registry ARGV`` with that connection string, as a user runs it."""
    env = {**os.environ, CONNECTION_STRING_ENV: connection_string}
    return subprocess.run([sys.executable, "-m", "pipelines", "registry", *argv], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_error_line(done: subprocess.CompletedProcess[str], *parts: str) -> str:
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not "), done.stderr
    assert all(part in lines[0] for part in parts), lines[0]
    return lines[0]


def test_a_listing_whose_responses_are_cut_short_ends_as_one_error_line_after_bounded_tries(proxied: Proxied) -> None:
    proxied.faults.cut, proxied.faults.cut_path = 100, "comp=list"
    done = registry_cli(proxied.connection_string, "list", "--store", proxied.uri, "--model", MODEL)
    line = assert_one_error_line(done, "list 'models/digits'", "every response was cut short before its end", "IncompleteRead(")
    assert "AttributeError" not in line and "Traceback" not in done.stderr
    assert proxied.faults.seen == ["GET cut"] * TRIES_AFTER_NO_ANSWER


def test_a_manifest_whose_responses_are_cut_short_ends_as_one_error_line_after_bounded_tries(proxied: Proxied) -> None:
    proxied.faults.cut, proxied.faults.cut_path = 100, "MANIFEST.json"
    done = registry_cli(proxied.connection_string, "show", "--store", proxied.uri, "--model", MODEL, "--version", "1")
    assert_one_error_line(done, f"read 'models/{MODEL}/versions/1/MANIFEST.json'", "every response was cut short")
    assert [s for s in proxied.faults.seen if s != "GET forward"] == ["GET cut"] * SDK_DOWNLOAD_TRIES


def test_connections_dropped_before_the_answer_end_as_one_error_line_after_bounded_tries(proxied: Proxied) -> None:
    proxied.faults.drop = 100
    done = registry_cli(proxied.connection_string, "history", "--store", proxied.uri, "--model", MODEL)
    assert_one_error_line(done, "list 'models/digits'", "the connection broke off before a complete response "
                          "(Remote end closed connection without response)")
    assert proxied.faults.seen == ["GET drop"] * TRIES_AFTER_NO_ANSWER
    proxied.faults.drop = 0
    assert registry_cli(proxied.connection_string, "history", "--store", proxied.uri, "--model", MODEL).returncode == 0


def test_an_endpoint_where_nothing_listens_ends_as_one_error_line(azurite: Azurite) -> None:
    dead = f"http://127.0.0.1:{free_port()}/devstoreaccount1"  # a port just freed: nothing listens there
    connection_string = azurite.connection_string.replace(azurite.endpoint, dead)
    done = registry_cli(connection_string, "list", "--store", f"{dead}/models", "--model", MODEL)
    assert_one_error_line(done, f"at {dead} (container 'models')", "no connection (Connection refused)",
                          "expected the Blob service there")
