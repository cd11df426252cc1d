"""Render the PyTorchJob that the train step would create for given pipeline parameters, for review.

``python -m pipelines render --output-dir DIR [--param NAME=VALUE …]`` calls :func:`render_pytorchjob`
with the pipeline's parameters (its defaults overlaid with the ``--param`` values). Two values exist
only at run time and appear as placeholders: the run id (``RUN_ID``, which also names the job) and the
prepared data set's prefix (``prepared/DATASET_DIGEST``, a digest of the data that prepare_data computes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.training.job import run_config
from components.training.pytorchjob import PyTorchJobSettings, build_pytorchjob

RUN_ID_PLACEHOLDER = "RUN_ID"
DATASET_PLACEHOLDER = "prepared/DATASET_DIGEST"
OUTPUT_FILE = "pytorchjob.yaml"
DEFAULT_NAMESPACE = "kubeflow-user-example-com"  # Kubeflow's example profile; at run time: the step's own namespace

# Pipeline parameter → TrainConfig field, as pipelines/pipeline.py wires them into the train step.
CONFIG_PARAMS = {"arch": "arch", "epochs": "epochs", "batch_size": "batch_size", "optimizer": "optimizer", "lr": "lr",
                 "num_ps": "num_ps", "num_workers": "num_workers", "seed": "seed", "train_mode": "mode",
                 "train_checkpoint_every": "checkpoint_every", "train_max_staleness": "max_staleness", "train_bf16": "bf16"}


def render_pytorchjob(params: Mapping[str, Any], output_dir: Path, namespace: str = DEFAULT_NAMESPACE) -> Path:
    """Write ``pytorchjob.yaml`` for these pipeline parameters into ``output_dir``; return its path."""
    if "store_uri" not in params:
        raise ValueError(f"expected a store_uri parameter, got only {sorted(params)}")
    settings = {field: params[name] for name, field in CONFIG_PARAMS.items() if name in params}
    config = run_config(str(params["store_uri"]), DATASET_PLACEHOLDER, RUN_ID_PLACEHOLDER, **settings)
    job = build_pytorchjob(config, RUN_ID_PLACEHOLDER, PyTorchJobSettings(namespace=namespace),
                           timeout_s=int(params.get("train_timeout_s", 3600)), backoff_limit=int(params.get("train_backoff_limit", 3)))
    header = (f"# The PyTorchJob the train step creates for these parameters (launcher=pytorchjob).\n"
              f"# Filled in at run time: {RUN_ID_PLACEHOLDER} (the pipeline run id; it also names the job),\n"
              f"# {DATASET_PLACEHOLDER} (the prepared data set) and the namespace (the step's own).\n")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / OUTPUT_FILE
    path.write_text(header + yaml.safe_dump(job, sort_keys=False))
    return path
