"""Run the whole pipeline on this machine under ``kfp.local`` and report what it produced.

Every step runs as a subprocess of this interpreter (``SubprocessRunner(use_venv=False)``); the
training step starts its parameter-server and worker processes, the deploy step leaves a KServe
server running on 127.0.0.1. Afterwards the summary reads the registry and calls the endpoint over
REST, so what it prints is what the store and the server actually hold.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.data.prepare import first_examples, read_info
from components.data.sample import write_sample
from components.deploy import local as local_server
from components.registry import Registry
from components.store import Store, open_store
from pipelines.pipeline import training_pipeline
from serving.client import predict_v1

DEFAULT_WORKDIR = Path(".work")


def git_commit() -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``""`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return commit + ("-dirty" if dirty.strip() else "")


def local_arguments(workdir: Path, data_uri: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's arguments for a local run: the bundled sample and stores under ``workdir``."""
    workdir = workdir.resolve()
    arguments = {
        "data_uri": data_uri or write_sample(str(workdir / "data" / "digits")),
        "store_uri": str(workdir / "store"),
        "local_state_dir": str(workdir / "serving"),
        "code_version": git_commit(),
    }
    return {**arguments, **overrides}


def open_run_store(arguments: dict[str, Any]) -> Store:
    """The run's store, its root created (a Blob container) before any step writes to it."""
    store = open_store(arguments["store_uri"])
    store.ensure_root()
    return store


def run_local(workdir: Path, arguments: dict[str, Any]) -> None:
    """Run the pipeline to completion; raises when a step fails."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir.resolve() / "kfp-root"), raise_on_error=True)
    training_pipeline(**arguments)


@dataclass
class Summary:
    model_name: str
    version: int
    accuracy: float
    decision: str
    reason: str
    url: str | None
    prediction: dict[str, Any] | None
    true_label: str | None


def summarize(store: Store, workdir: Path, arguments: dict[str, Any], model_name: str) -> Summary:
    """What the run left in the registry of ``store`` and, when it deployed, one prediction from the endpoint."""
    registry = Registry(store, model_name)
    version = registry.versions()[-1]
    manifest = registry.manifest(version)
    verdict = manifest["verdict"]
    summary = Summary(model_name, version, manifest["metrics"]["candidate"]["accuracy"], verdict["decision"], verdict["reason"], None, None, None)
    endpoint = local_server.read_state(Path(arguments["local_state_dir"]))
    if verdict["decision"] == "accepted" and endpoint is not None:
        info = read_info(store, manifest["lineage"]["dataset_prefix"])
        pixels, labels = first_examples(store, info, "test", 1)
        _write_requests(workdir, pixels)
        summary.url = endpoint.url
        summary.prediction = predict_v1(endpoint.url, model_name, pixels)[0]
        summary.true_label = info.class_names[int(labels[0])]
    return summary


def _write_requests(workdir: Path, pixels: np.ndarray) -> None:
    (workdir / "request-v1.json").write_text(json.dumps({"instances": pixels.tolist()}))
    v2 = {"inputs": [{"name": "images", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.astype(float).ravel().tolist()}]}
    (workdir / "request-v2.json").write_text(json.dumps(v2))


def format_summary(s: Summary, workdir: Path) -> str:
    lines = ["", "=" * 72, f"test accuracy      {s.accuracy:.4f}", f"registry version   {s.model_name} v{s.version} ({s.decision}: {s.reason})"]
    if s.url is None:
        why = "the gate rejected the candidate" if s.decision != "accepted" else "no local server state was found"
        lines += [f"endpoint           not deployed ({why})", "=" * 72]
        return "\n".join(lines)
    top = s.prediction["probabilities"][s.prediction["class"]]
    lines += [
        f"endpoint           {s.url}  (model '{s.model_name}'; stop it with: make stop)",
        f"REST prediction    class {s.prediction['label']} with p={top:.3f} (true label {s.true_label})",
        "",
        "try it:",
        f"  curl -s -H 'Content-Type: application/json' -d @{workdir}/request-v1.json {s.url}/v1/models/{s.model_name}:predict",
        f"  curl -s -H 'Content-Type: application/json' -d @{workdir}/request-v2.json {s.url}/v2/models/{s.model_name}/infer",
        "=" * 72,
    ]
    return "\n".join(lines)
