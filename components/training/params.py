"""The training knobs a pipeline run sets: one table from pipeline parameter to :class:`TrainConfig` field.

The pipeline's signature takes its defaults from :data:`TRAIN_DEFAULTS` and hands the knobs to the train
step through :func:`knobs_from_pipeline`; the step's inputs carry the field names, and its body turns them
into a :class:`TrainConfig` with :func:`knobs_from_step`; ``render`` reads the same table. The step has no
defaults of its own: KFP runs a component's source without this module, so a default there could only be a
second literal copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components.training.config import TrainConfig

# Only the knob fields of this instance are read; the run-specific ones are filled in per run.
TRAIN_DEFAULTS = TrainConfig(store_uri="", dataset_prefix="", output_prefix="")

# Pipeline parameter → TrainConfig field (also the train step's input name). Loop mechanics carry a
# ``train_`` prefix in the pipeline, where names such as ``mode`` would be ambiguous with other steps.
PIPELINE_KNOBS: dict[str, str] = {
    "arch": "arch",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "lr": "lr",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "warmup_epochs": "warmup_epochs",
    "num_ps": "num_ps",
    "num_workers": "num_workers",
    "seed": "seed",
    "train_mode": "mode",
    "train_augment": "augment",
    "train_checkpoint_every": "checkpoint_every",
    "train_max_staleness": "max_staleness",
    "train_bf16": "bf16",
    "train_loader_workers": "loader_workers",
    "train_prefetch": "prefetch",
    "train_shuffle_window": "shuffle_window",
}

# TrainConfig fields that are no pipeline parameter, and why. Every field is in exactly one of the two tables.
RUN_FIELDS: dict[str, str] = {
    "store_uri": "the run's store, the pipeline's store_uri passed as such",
    "dataset_prefix": "where prepare_data wrote this run's data set",
    "output_prefix": "derived from the run id (runs/<run_id>/model)",
    "checkpoint_prefix": "derived from the output prefix",
    "rpc_timeout_s": "how long a rank waits on a silent peer: a property of the ranks' network, not of the model",
}


def knobs_from_pipeline(params: Mapping[str, Any]) -> dict[str, Any]:
    """TrainConfig field → value, from pipeline arguments (values or KFP channels) named by the table."""
    missing = [name for name in PIPELINE_KNOBS if name not in params]
    if missing:
        raise ValueError(f"expected every training knob among the pipeline arguments, missing {missing}")
    return {field: params[name] for name, field in PIPELINE_KNOBS.items()}


def knobs_from_step(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """TrainConfig field → value, from the train step's arguments (which carry the field names)."""
    missing = [field for field in PIPELINE_KNOBS.values() if field not in arguments]
    if missing:
        raise ValueError(f"expected every training knob among the train step's arguments, missing {missing}")
    return {field: arguments[field] for field in PIPELINE_KNOBS.values()}
