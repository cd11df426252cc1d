"""Push a trained model into the registry as a new immutable version, with its verdict and lineage."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from components.modelfile import METRICS_FILE
from components.registry import Registry
from components.store import Store
from components.training.worker import HISTORY_FILE


def push_model(store: Store, model_name: str, model_prefix: str, metrics: dict[str, Any],
               verdict: dict[str, str], lineage: dict[str, Any]) -> tuple[int, str]:
    """Copy the model at ``model_prefix`` into the registry of the same store, adding ``metrics.json``;
    return (version, URI)."""
    registry = Registry(store, model_name)
    with tempfile.TemporaryDirectory(prefix="push-") as tmp:
        folder = Path(tmp)
        store.download_prefix(model_prefix, folder)
        (folder / HISTORY_FILE).unlink(missing_ok=True)  # training curves live with the run, not the version
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
        version = registry.push(folder, {"metrics": metrics, "verdict": verdict, "lineage": lineage})
    return version, registry.version_uri(version)
