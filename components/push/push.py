"""Push a trained model into the registry as a new immutable version, with its verdict and lineage."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.modelfile import METRICS_FILE
from components.registry import Registry
from components.store import Store
from components.training.worker import HISTORY_FILE

LOCATION_SETTINGS = ("store_uri", "dataset_prefix", "output_prefix", "checkpoint_prefix")  # where, not how


@dataclass(frozen=True)
class Pushed:
    """A registered version, and the production version whose weights it repeats exactly (None: new weights)."""

    model_name: str
    version: int
    uri: str
    decision: str
    identical_to: int | None

    def describe(self) -> str:
        """The push step's log line; a rerun that made production's very weights says so."""
        line = f"registered {self.model_name} version {self.version} at {self.uri} ({self.decision})"
        if self.identical_to is None:
            return line
        return (f"{line}; its weights are identical to production version {self.identical_to}'s (the same SHA-256: "
                f"the same data, code and seed): nothing new to deploy, production stays at version {self.identical_to}")


def push_model(store: Store, model_name: str, model_prefix: str, metrics: dict[str, Any],
               verdict: dict[str, str], lineage: dict[str, Any]) -> Pushed:
    """Copy the model at ``model_prefix`` into the registry of the same store, adding ``metrics.json``.

    Every candidate is registered, a repeat of production's weights too: its lineage (run, data) is a
    record of its own."""
    registry = Registry(store, model_name)
    with tempfile.TemporaryDirectory(prefix="push-") as tmp:
        folder = Path(tmp)
        store.download_prefix(model_prefix, folder)
        lineage = {**lineage, "parameters": training_parameters(folder / HISTORY_FILE)}
        (folder / HISTORY_FILE).unlink(missing_ok=True)  # training curves live with the run, not the version
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
        version = registry.push(folder, {"metrics": metrics, "verdict": verdict, "lineage": lineage})
    return Pushed(model_name, version, registry.version_uri(version), verdict["decision"], registry.identical_production(version))


def training_parameters(history: Path) -> dict[str, Any]:
    """The settings the model was trained with, as the training run recorded them (``config`` in its
    history), without the store locations it read and wrote."""
    try:
        config = json.loads(history.read_text()).get("config") or {}
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        # They are lineage, not the model: a folder made by hand without a readable history still registers.
        return {}
    return {name: value for name, value in config.items() if name not in LOCATION_SETTINGS}
