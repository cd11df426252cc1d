"""The preflight of a local run: a taken serving port, a store that cannot be written and data that lists no
files are refused before any step runs, with the messages the steps would have given after training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.blob_store import CONNECTION_STRING_ENV
from components.deploy.local import STATE_FILE, check_port_free
from components.errors import DataError, DeployError, StoreError
from components.store import open_store
from pipelines.preflight import check_data, check_store_writable, preflight
from tests.conftest import free_port

LISTENER = "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('up', flush=True); time.sleep(600)"


@pytest.fixture
def listener() -> Iterator[tuple[int, subprocess.Popen]]:
    """A real program listening on a free port (in a process group of its own, as the local server runs)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline() == "up\n"
        yield port, proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_cli(tmp_path: Path, *params: str, data_uri: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipelines", "run", "--local", "--workdir", str(tmp_path)]
    command += ["--data-uri", data_uri] if data_uri else []
    for param in params:
        command += ["--param", param]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_a_port_another_program_listens_on_is_refused(listener: tuple[int, subprocess.Popen], tmp_path: Path) -> None:
    port, _ = listener
    with pytest.raises(DeployError, match=f"port {port} on 127.0.0.1 is already in use by another program; choose another"):
        check_port_free(port, tmp_path / "serving")


def test_the_port_of_the_server_this_work_dir_runs_is_not_a_clash(listener: tuple[int, subprocess.Popen], tmp_path: Path) -> None:
    """The deploy step replaces the server recorded in its state folder, so its port counts as free."""
    port, proc = listener
    (tmp_path / "serving").mkdir()
    state = {"url": f"http://127.0.0.1:{port}", "model_name": "digits", "model_uri": "x", "pid": proc.pid, "log": "x"}
    (tmp_path / "serving" / STATE_FILE).write_text(json.dumps(state))
    check_port_free(port, tmp_path / "serving")
    with pytest.raises(DeployError, match="already in use"):
        check_port_free(port, tmp_path / "elsewhere")


def test_a_free_port_a_writable_store_and_listed_data_pass_in_one_line(sample_uri: str, store_uri: str, tmp_path: Path) -> None:
    params = {"data_uri": sample_uri, "deploy_target": "local", "serving_port": free_port(), "local_state_dir": str(tmp_path / "serving")}
    store = open_store(store_uri)
    store.ensure_root()
    found = preflight(params, store)
    assert found == f"1797 images in 10 classes (mnist-idx), store writable, port {params['serving_port']} free"
    assert store.list() == []  # the write probe is gone again


def test_a_kserve_run_does_not_check_the_local_port(sample_uri: str, listener: tuple[int, subprocess.Popen], tmp_path: Path) -> None:
    params = {"data_uri": sample_uri, "deploy_target": "kserve", "serving_port": listener[0], "local_state_dir": str(tmp_path)}
    assert "port" not in preflight(params, open_store(str(tmp_path / "store")))


def test_data_that_lists_no_files_is_the_prepare_steps_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files in .*empty: expected MNIST IDX files or an ImageFolder tree"):
        check_data(str(tmp_path / "empty"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not images")
    with pytest.raises(DataError, match=r"expected MNIST IDX files .* found \['readme.txt'\]"):
        check_data(str(tmp_path / "notes"))


def test_a_local_store_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")  # a folder cannot be made below a file, whoever runs the test
    with pytest.raises(StoreError, match=r"expected a store this user can write to at .*a-file/store, got: Not a directory"):
        check_store_writable(open_store(str(tmp_path / "a-file" / "store")))


def test_a_blob_store_that_refuses_writes_is_one_clear_error(azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = azurite.new_container()
    wrong_key = azurite.connection_string.replace(azurite.account_key, "d3Jvbmcta2V5" * 8)
    monkeypatch.setenv(CONNECTION_STRING_ENV, wrong_key)
    with pytest.raises(StoreError, match=r"could not write 'preflight/write-check-\w+' in .*: HTTP 403"):
        check_store_writable(open_store(uri))


def test_the_cli_refuses_empty_data_before_any_step_runs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli(tmp_path / "work", f"serving_port={free_port()}", data_uri=str(tmp_path / "empty"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: no files in {tmp_path / 'empty'}: expected MNIST IDX")
    assert "preflight       FAILED" in result.stdout and "prepare-data" not in result.stdout
    assert not (tmp_path / "work" / "kfp-root").exists()  # no step ran


def test_the_cli_refuses_a_taken_port_before_any_step_runs(listener: tuple[int, subprocess.Popen], tmp_path: Path) -> None:
    result = run_cli(tmp_path, f"serving_port={listener[0]}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: port {listener[0]} on 127.0.0.1 is already in use by another program; choose another with --param serving_port=N")
    assert "Traceback" not in result.stderr and not (tmp_path / "kfp-root").exists()

