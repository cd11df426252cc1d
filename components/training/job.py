"""Run a training job with the chosen launcher and collect what it produced."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from components.store import Store, join_key
from components.training.config import TrainConfig
from components.training.local import launch_local
from components.training.pytorchjob_launcher import run_pytorchjob
from components.training.trainjob_launcher import run_trainjob
from components.training.worker import HISTORY_FILE

LAUNCHERS = ("local", "trainjob", "pytorchjob")  # trainjob: Kubeflow Trainer v2; pytorchjob: Training Operator v1 (legacy)


def model_prefix(run_id: str) -> str:
    """Where a pipeline run's model folder lives in the store."""
    return f"runs/{run_id}/model"


def run_config(store_uri: str, dataset_prefix: str, run_id: str, **settings: Any) -> TrainConfig:
    """The configuration of one pipeline run's training job (the train step and ``render`` both use this)."""
    config = TrainConfig(store_uri=store_uri, dataset_prefix=dataset_prefix, output_prefix=model_prefix(run_id), **settings)
    config.validate()
    return config


@dataclass(frozen=True)
class TrainResult:
    model_prefix: str
    history: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    def best(self) -> dict[str, Any]:
        return max(self.history, key=lambda e: (e["val_accuracy"], e["epoch"]))


def train(config: TrainConfig, store: Store, launcher: str, timeout_s: float, backoff_limit: int, run_id: str = "") -> TrainResult:
    """Run the job to completion (raises :class:`TrainingError` if it fails) and read its history.

    ``store``: the open store that ``config.store_uri`` names (the ranks, other processes, open their own).
    ``backoff_limit``: how many times the whole job may be relaunched from its latest checkpoint.
    ``run_id``: the pipeline run, which names the cluster job (``trainjob`` and ``pytorchjob``).
    """
    if launcher == "local":
        launch_local(config, timeout_s=timeout_s, backoff_limit=backoff_limit)
    elif launcher == "trainjob":
        run_trainjob(config, run_id, timeout_s, backoff_limit)
    elif launcher == "pytorchjob":
        run_pytorchjob(config, run_id, timeout_s, backoff_limit)
    else:
        raise ValueError(f"expected launcher in {LAUNCHERS}, got {launcher!r}")
    history = json.loads(store.read_bytes(join_key(config.output_prefix, HISTORY_FILE)))
    return TrainResult(config.output_prefix, history["epochs"], history["config"])
