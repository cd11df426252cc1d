"""The whole pipeline under kfp.local, through the CLI, as `make run` runs it (smaller: fewer epochs): one console
line per step, each step's log and the run's reports in WORKDIR/runs/<run id>/, a failed step's reason last."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from components.data.prepare import first_examples, read_info
from components.deploy.local import read_state, stop
from components.registry import Registry
from components.runtimes import PLATFORMS
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


def test_a_failed_step_ends_the_output_with_its_name_its_error_line_and_its_log(tmp_path: Path) -> None:
    """prepare-data runs, train-model refuses the architecture: the reason is on the last lines, not five above."""
    try:
        result = subprocess.run([sys.executable, "-m", "pipelines", "run", "--local", "--workdir", str(tmp_path),
                                 "--param", "arch=nosuch", "--param", f"serving_port={free_port()}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    finally:
        stop(tmp_path / "serving")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    run_dir = (tmp_path / "runs" / "latest").resolve()
    assert re.fullmatch(r"train-model +FAILED after \d+\.\ds", lines[-3]), lines[-3]
    assert lines[-2].startswith("error: step train-model failed: ValueError: expected arch in (") and lines[-2].endswith("got 'nosuch'")
    assert lines[-1] == f"  its full log: {run_dir}/logs/train-model.log"
    assert "Traceback" in (run_dir / "logs" / "train-model.log").read_text()  # the whole story is in the log
    assert "Traceback" not in result.stdout and "Got executor_input" not in result.stdout and "DockerRunner" not in result.stdout
    assert [line.split()[1] for line in lines if line.startswith("prepare-data")] == ["started", "done"]
    assert (run_dir / "data.md").is_file()  # the reports of the steps that ran are collected all the same


@pytest.mark.slow
def test_whole_pipeline_trains_registers_deploys_and_then_gates_a_worse_candidate(tmp_path):
    port = str(free_port())
    try:
        first = run_cli("run", "--local", "--workdir", str(tmp_path), "--param", "epochs=4", "--param", f"serving_port={port}",
                        "--param", "accuracy_threshold=0.8", "--param", "collect_fraction=1.0",
                        "--param", "profile_seconds=0.5")  # short levels: both runtimes are measured all the same
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "REST prediction    class" in first.stdout and f"http://127.0.0.1:{port}" in first.stdout
        assert_followable(first.stdout, tmp_path, epochs=4, port=port)
        registry = Registry(open_store(str(tmp_path / "store")), "digits")
        manifest = registry.manifest(1)
        assert manifest["verdict"]["decision"] == "accepted" and registry.production().version == 1
        assert manifest["lineage"]["dataset_hash"] and manifest["lineage"]["run_id"]
        assert set(manifest["files"]) == {"model.safetensors", "model.json", "metrics.json", "monitoring.json", "model.onnx"}
        assert manifest["onnx"]["passed"] and manifest["onnx"]["parity"]["agreement"] >= 0.999  # the export passed parity
        profile = manifest["profile"]  # both runtimes measured in the real predictor; the faster one named
        assert set(profile["runtimes"]) == {"torch", "onnx"} and profile["runtime"] in profile["runtimes"]
        endpoint = read_state(tmp_path / "serving")
        assert predict_v1(endpoint.url, "digits", np.zeros((1, 1, 28, 28)))[0]["label"] in "0123456789"
        with urllib.request.urlopen(f"{endpoint.url}/v2/models/digits", timeout=10) as answer:  # --runtime auto serves it
            assert json.load(answer)["platform"] == PLATFORMS[profile["runtime"]]

        # A one-epoch candidate is worse than production by more than the tolerance: registered, not deployed.
        second = run_cli("run", "--local", "--workdir", str(tmp_path), "--param", "epochs=1", "--param", f"serving_port={port}",
                         "--param", "accuracy_threshold=0.0", "--param", "tolerance=0.0", "--param", "lr=0.0001",
                         "--param", "profile_seconds=0")  # no profile: the version says so, deploy would size by default
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert registry.manifest(2)["verdict"]["decision"] == "rejected"
        assert "worse than production" in registry.manifest(2)["verdict"]["reason"]
        assert registry.production().version == 1
        # The server was given version 1 pinned to the manifest digest the pointer records.
        digest = registry.production().record["manifest_sha256"]
        assert json.loads((tmp_path / "serving" / "serving.json").read_text())["model_uri"].endswith(f"/versions/1#manifest-sha256={digest}")
        assert "registry version   digits v2 (rejected" in second.stdout  # its own version, not another run's

        # The server collected what it answered into the work dir's store: inverted digits read as drift, and
        # the monitoring pipeline runs the training pipeline again (run --local), which registers version 3
        # (one epoch, below the default threshold: rejected; no profile, as a rejected version is never served or sized).
        store = open_store(str(tmp_path / "store"))
        info = read_info(store, manifest["lineage"]["dataset_prefix"])
        pixels, _ = first_examples(store, info, "test", 200)
        for start in range(0, len(pixels), 16):
            predict_v1(endpoint.url, "digits", (255 - pixels[start:start + 16]).astype(np.float32))
        monitored = run_cli("run", "--local", "--pipeline", "monitoring", "--workdir", str(tmp_path), "--param", "since=1h",
                            "--param", "retrain_on_drift=true", "--param",
                            json.dumps({"epochs": 1, "serving_port": int(port), "profile_seconds": 0}).join(["retrain_params=", ""]))
        assert monitored.returncode == 0, monitored.stdout[-3000:] + monitored.stderr[-3000:]
        assert re.search(r"^drift-report +done in \S+: drift \(\d+ records\)$", monitored.stdout, re.M), monitored.stdout
        assert "start-training  done in" in monitored.stdout and registry.versions() == [1, 2, 3]
        assert re.search(r"^retraining +the training pipeline ran here and registered v3 \(", monitored.stdout, re.M)
        assert registry.manifest(3)["lineage"]["run_id"]
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
                         "--param", "accuracy_threshold=0.0", "--param", f"serving_port={port}",
                         "--param", "profile_seconds=0", env=env)  # no profile: it reads a local copy; the first test profiles
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert azurite.account_key not in result.stdout + result.stderr  # the key never reaches a log line
        listing = run_cli("registry", "list", "--store", store_uri, "--model", "digits", env=env)
        assert listing.returncode == 0, listing.stderr
        row = next(line for line in listing.stdout.splitlines() if line.startswith("*"))
        assert row.split()[1] == "1" and "accepted" in row  # version 1, in production, with its verdict
        assert json.loads((tmp_path / "serving" / "serving.json").read_text())["model_uri"].startswith(store_uri)
    finally:
        stop(tmp_path / "serving")


def assert_followable(stdout: str, workdir: Path, epochs: int, port: str) -> None:
    """One line per step as it starts and as it ends with its key figure, one per epoch, no kfp.local noise;
    each step's log and the reports (with extensions) in the run's folder, their paths in the summary."""
    steps = ["prepare-data", "train-model", "evaluate-model", "push-model", "deploy-model"]
    lines = stdout.splitlines()
    assert [(line.split()[0], line.split()[1]) for line in lines if line.split()[:1] and line.split()[0] in steps and
            line.split()[1] in ("started", "done")] == [(step, event) for step in steps for event in ("started", "done")]
    assert len([line for line in lines if line.startswith("train-model     epoch ")]) == epochs
    figures = {line.split()[0]: line.split(": ", 1)[-1] for line in lines if " done in " in line}
    assert "images" in figures["prepare-data"] and "test accuracy" in figures["evaluate-model"]
    assert figures["push-model"] == "registered version 1" and figures["deploy-model"] == f"serving at http://127.0.0.1:{port}"
    assert "Got executor_input" not in stdout and "DockerRunner" not in stdout and len(lines) < 60
    run_dir = (workdir / "runs" / "latest").resolve()
    assert {p.name for p in (run_dir / "logs").iterdir()} >= {f"{step}.log" for step in steps}
    assert "Got executor_input" in (run_dir / "logs" / "prepare-data.log").read_text()  # the full log keeps it
    assert (run_dir / "report.html").read_text().lstrip().lower().startswith(("<!doctype html", "<html"))
    assert (run_dir / "evaluation.md").is_file() and (run_dir / "data.md").is_file()
    assert f"reports            {run_dir}/report.html" in stdout
