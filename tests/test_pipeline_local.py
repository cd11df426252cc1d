"""The whole pipeline under kfp.local, through the CLI, as `make run` runs it (smaller: fewer epochs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from components.deploy.local import read_state, stop
from components.registry import Registry
from components.store import open_store
from serving.client import predict_v1
from tests.conftest import free_port


def run_cli(*args: str, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def test_unknown_parameter_lists_the_real_ones(tmp_path):
    result = run_cli("run", "--local", "--workdir", str(tmp_path), "--param", "nosuch=1")
    assert result.returncode != 0
    assert "unknown pipeline parameter 'nosuch'" in result.stderr and "accuracy_threshold" in result.stderr


def test_badly_typed_parameter_is_rejected(tmp_path):
    result = run_cli("run", "--local", "--workdir", str(tmp_path), "--param", "epochs=many")
    assert result.returncode != 0 and "pipeline parameter 'epochs' expects" in result.stderr and "'many'" in result.stderr


@pytest.mark.parametrize("name", ["digits\n", "Digits", "my_model"])
def test_an_invalid_model_name_is_refused_before_any_step_runs(tmp_path, name):
    try:
        result = run_cli("run", "--local", "--workdir", str(tmp_path), "--param", f"model_name={name}")
    finally:
        stop(tmp_path / "serving")  # (the old code ran the whole pipeline, and deployed a "digits\n" model)
    assert result.returncode != 0 and "pipeline parameter 'model_name': expected a model name" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "store").exists()  # nothing was prepared or trained


@pytest.mark.slow
def test_whole_pipeline_trains_registers_deploys_and_then_gates_a_worse_candidate(tmp_path):
    port = str(free_port())
    try:
        first = run_cli("run", "--local", "--workdir", str(tmp_path), "--param", "epochs=4", "--param", f"serving_port={port}",
                        "--param", "accuracy_threshold=0.8")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "REST prediction    class" in first.stdout and f"http://127.0.0.1:{port}" in first.stdout
        registry = Registry(open_store(str(tmp_path / "store")), "digits")
        manifest = registry.manifest(1)
        assert manifest["verdict"]["decision"] == "accepted" and registry.production().version == 1
        assert manifest["lineage"]["dataset_hash"] and manifest["lineage"]["run_id"]
        assert set(manifest["files"]) == {"model.safetensors", "model.json", "metrics.json"}
        endpoint = read_state(tmp_path / "serving")
        assert predict_v1(endpoint.url, "digits", np.zeros((1, 1, 28, 28)))[0]["label"] in "0123456789"

        # A one-epoch candidate is worse than production by more than the tolerance: registered, not deployed.
        second = run_cli("run", "--local", "--workdir", str(tmp_path), "--param", "epochs=1", "--param", f"serving_port={port}",
                         "--param", "accuracy_threshold=0.0", "--param", "tolerance=0.0", "--param", "lr=0.0001")
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert registry.manifest(2)["verdict"]["decision"] == "rejected"
        assert "worse than production" in registry.manifest(2)["verdict"]["reason"]
        assert registry.production().version == 1
        # The server was given version 1 pinned to the manifest digest the pointer records.
        digest = registry.production().record["manifest_sha256"]
        assert json.loads((tmp_path / "serving" / "serving.json").read_text())["model_uri"].endswith(f"/versions/1#manifest-sha256={digest}")
        assert "registry version   digits v2 (rejected" in second.stdout  # its own version, not another run's
    finally:
        stop(tmp_path / "serving")


@pytest.mark.slow
def test_whole_pipeline_through_azure_blob_on_azurite(azurite, tmp_path):
    """Prepared data, training ranks, registry and predictor all go through the real Blob API."""
    store_uri = azurite.store_uri("pipeline-store")  # run --local creates the container
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    port = str(free_port())
    try:
        result = run_cli("run", "--local", "--workdir", str(tmp_path), "--param", f"store_uri={store_uri}", "--param", "epochs=2",
                         "--param", "accuracy_threshold=0.0", "--param", f"serving_port={port}", env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert azurite.account_key not in result.stdout + result.stderr  # the key never reaches a log line
        listing = run_cli("registry", "list", "--store", store_uri, "--model", "digits", env=env)
        assert listing.returncode == 0, listing.stderr
        row = next(line for line in listing.stdout.splitlines() if line.startswith("*"))
        assert row.split()[1] == "1" and "accepted" in row  # version 1, in production, with its verdict
        assert json.loads((tmp_path / "serving" / "serving.json").read_text())["model_uri"].startswith(store_uri)
    finally:
        stop(tmp_path / "serving")
