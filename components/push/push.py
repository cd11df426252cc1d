"""Push a trained model into the registry as a new immutable version, with its verdict and lineage."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.data.prepare import DATASET_FILE
from components.export import export_version
from components.modelfile import METRICS_FILE
from components.monitoring.reference import REFERENCE_FILE, compute_reference
from components.profile import PROFILE_KEY, ProfileSettings, format_profile, profile_version
from components.registry import Registry
from components.store import Store, join_key
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
               verdict: dict[str, str], lineage: dict[str, Any], dataset_prefix: str | None = None,
               profile: ProfileSettings | None = None) -> Pushed:
    """Copy the model at ``model_prefix`` into the registry of the same store, adding ``metrics.json`` and,
    from the training split of the prepared data set at ``dataset_prefix``, the drift report's reference
    statistics (``monitoring.json``), and ``model.onnx`` when the export passes its parity check on the test
    split (the manifest's ``onnx`` record says how it went either way). With ``profile`` settings the version is
    profiled per runtime in the real predictor (:mod:`components.profile`) and the profile goes into the manifest,
    where ``--runtime auto`` and the deploy step's sizing read it; a runtime that cannot be served fails the push
    before anything is written.

    Every candidate is registered, a repeat of production's weights too: its lineage (run, data) is a
    record of its own."""
    registry = Registry(store, model_name)
    with tempfile.TemporaryDirectory(prefix="push-") as tmp:
        folder = Path(tmp)
        store.download_prefix(model_prefix, folder)
        lineage = {**lineage, "parameters": training_parameters(folder / HISTORY_FILE)}
        (folder / HISTORY_FILE).unlink(missing_ok=True)  # training curves live with the run, not the version
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
        if dataset_prefix is not None:
            write_reference(store, dataset_prefix, folder)
        onnx = export_version(store, dataset_prefix, folder)  # model.onnx only when it passed parity on the test split
        metadata = {"metrics": metrics, "verdict": verdict, "lineage": lineage, "onnx": onnx}
        if profile is not None:
            metadata[PROFILE_KEY] = profile_version(folder, profile)  # after the export: model.onnx is profiled too
            print(format_profile(metadata[PROFILE_KEY])[0])
        version = registry.push(folder, metadata)
    return Pushed(model_name, version, registry.version_uri(version), verdict["decision"], registry.identical_production(version))


def write_reference(store: Store, dataset_prefix: str, folder: Path) -> bool:
    """Write ``monitoring.json`` into the version ``folder``; say so and write nothing when the data set has no
    index (a model pushed by hand from elsewhere): the version still registers, and a drift report refuses it
    by name. A data set that is there but unreadable raises, as in every other step."""
    if not store.exists(join_key(dataset_prefix, DATASET_FILE)):
        print(f"no {REFERENCE_FILE}: no prepared data set at {store.uri}/{dataset_prefix} (no {DATASET_FILE}); "
              "drift reports will refuse this version")
        return False
    (folder / REFERENCE_FILE).write_text(compute_reference(store, dataset_prefix).to_json())
    return True


def training_parameters(history: Path) -> dict[str, Any]:
    """The settings the model was trained with, as the training run recorded them (``config`` in its
    history), without the store locations it read and wrote."""
    try:
        config = json.loads(history.read_text()).get("config") or {}
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        # They are lineage, not the model: a folder made by hand without a readable history still registers.
        return {}
    return {name: value for name, value in config.items() if name not in LOCATION_SETTINGS}


def profile_settings(latency_budget_ms: float, seconds_per_level: float) -> ProfileSettings | None:
    """The push step's profile settings from its parameters; ``seconds_per_level`` 0 skips the profile (the
    version then deploys with the default sizing, and ``--runtime auto`` decides without measurements)."""
    if seconds_per_level < 0:
        raise ValueError(f"expected profile seconds per level of 0 (no profile) or more, got {seconds_per_level:g}")
    if seconds_per_level == 0:
        return None
    return ProfileSettings(latency_budget_ms=latency_budget_ms, seconds_per_level=seconds_per_level)
