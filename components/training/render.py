"""Render the PyTorchJob that the train step would create for given pipeline parameters, for review.

``python -m pipelines render --output-dir DIR [--param NAME=VALUE …]`` calls :func:`render_pytorchjob`
with the pipeline's parameters (its defaults overlaid with the ``--param`` values), mapped to the training
configuration by the table the pipeline itself uses (:mod:`components.training.params`). Two values exist
only at run time and appear as placeholders: the run id (``RUN_ID``, which also names the job) and the
prepared data set's prefix (``prepared/DATASET_DIGEST``, a digest of the data that prepare_data computes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.training.job import run_config
from components.training.params import knobs_from_pipeline
from components.training.pytorchjob import PyTorchJobSettings, build_pytorchjob

RUN_ID_PLACEHOLDER = "RUN_ID"
DATASET_PLACEHOLDER = "prepared/DATASET_DIGEST"
OUTPUT_FILE = "pytorchjob.yaml"
DEFAULT_NAMESPACE = "kubeflow-user-example-com"  # Kubeflow's example profile; at run time: the step's own namespace

LAUNCH_PARAMS = ("store_uri", "train_timeout_s", "train_backoff_limit")  # the rest come from the knob table


def render_pytorchjob(params: Mapping[str, Any], output_dir: Path, namespace: str = DEFAULT_NAMESPACE) -> Path:
    """Write ``pytorchjob.yaml`` for these pipeline parameters into ``output_dir``; return its path."""
    missing = [name for name in LAUNCH_PARAMS if name not in params]
    if missing:
        raise ValueError(f"expected the pipeline parameters {list(LAUNCH_PARAMS)}, missing {missing}")
    config = run_config(str(params["store_uri"]), DATASET_PLACEHOLDER, RUN_ID_PLACEHOLDER, **knobs_from_pipeline(params))
    job = build_pytorchjob(config, RUN_ID_PLACEHOLDER, PyTorchJobSettings(namespace=namespace),
                           timeout_s=int(params["train_timeout_s"]), backoff_limit=int(params["train_backoff_limit"]))
    header = (f"# The PyTorchJob the train step creates for these parameters (launcher=pytorchjob).\n"
              f"# Filled in at run time: {RUN_ID_PLACEHOLDER} (the pipeline run id; it also names the job),\n"
              f"# {DATASET_PLACEHOLDER} (the prepared data set) and the namespace (the step's own).\n")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / OUTPUT_FILE
    path.write_text(header + yaml.safe_dump(job, sort_keys=False))
    return path
