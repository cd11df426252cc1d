"""Render the training job the train step would create for given pipeline parameters, for review, and the
ClusterTrainingRuntimes the project ships.

``python -m pipelines render --output-dir DIR [--param NAME=VALUE …]`` calls :func:`render_training` with the
pipeline's parameters (its defaults overlaid with the ``--param`` values), mapped to the training
configuration by the table the pipeline itself uses (:mod:`components.training.params`). It writes the
TrainJob (``launcher=trainjob``, the cluster default) with the ClusterTrainingRuntime it references, and the
legacy PyTorchJob. Two values exist only at run time and appear as placeholders: the run id (``RUN_ID``,
which also names the job) and the prepared data set's prefix (``prepared/DATASET_DIGEST``, a digest of the
data that prepare_data computes).

``python -m components.training.render`` rewrites ``manifests/trainer/clustertrainingruntimes.yaml`` (one
runtime per shipped parameter-server count); a test fails when the committed file differs from the builder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.cluster import DEFAULT_IMAGE
from components.training.config import TrainConfig
from components.training.job import run_config
from components.training.params import knobs_from_pipeline
from components.training.pytorchjob import PyTorchJobSettings, build_pytorchjob
from components.training.trainjob import SHIPPED_NUM_PS, RuntimeSettings, TrainJobSettings, build_runtime, build_trainjob

RUN_ID_PLACEHOLDER = "RUN_ID"
DATASET_PLACEHOLDER = "prepared/DATASET_DIGEST"
OUTPUT_FILE = "pytorchjob.yaml"
TRAINJOB_FILE = "trainjob.yaml"
RUNTIME_FILE = "clustertrainingruntime.yaml"
SHIPPED_RUNTIMES = "manifests/trainer/clustertrainingruntimes.yaml"
DEFAULT_NAMESPACE = "kubeflow-user-example-com"  # Kubeflow's example profile; at run time: the step's own namespace

LAUNCH_PARAMS = ("store_uri", "train_timeout_s", "train_backoff_limit")  # the rest come from the knob table
PLACEHOLDERS = (f"# Filled in at run time: {RUN_ID_PLACEHOLDER} (the pipeline run id; it also names the job),\n"
                f"# {DATASET_PLACEHOLDER} (the prepared data set) and the namespace (the step's own).\n")


def _config(params: Mapping[str, Any]) -> TrainConfig:
    missing = [name for name in LAUNCH_PARAMS if name not in params]
    if missing:
        raise ValueError(f"expected the pipeline parameters {list(LAUNCH_PARAMS)}, missing {missing}")
    return run_config(str(params["store_uri"]), DATASET_PLACEHOLDER, RUN_ID_PLACEHOLDER, **knobs_from_pipeline(params))


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of numbers on one line (the runtime's 127 permanent exit codes)."""

    def represent_list(self, data: list[Any]) -> yaml.Node:
        flow = bool(data) and all(isinstance(v, int) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow or None)


_Dumper.add_representer(list, _Dumper.represent_list)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120)


def _write(path: Path, header: str, documents: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + to_yaml(documents))
    return path


def render_pytorchjob(params: Mapping[str, Any], output_dir: Path, namespace: str = DEFAULT_NAMESPACE) -> Path:
    """Write ``pytorchjob.yaml`` for these pipeline parameters into ``output_dir``; return its path."""
    config = _config(params)
    job = build_pytorchjob(config, RUN_ID_PLACEHOLDER, PyTorchJobSettings(namespace=namespace),
                           timeout_s=int(params["train_timeout_s"]), backoff_limit=int(params["train_backoff_limit"]))
    header = "# The PyTorchJob the train step creates for these parameters (launcher=pytorchjob, legacy).\n" + PLACEHOLDERS
    return _write(output_dir / OUTPUT_FILE, header, [job])


def render_trainjob(params: Mapping[str, Any], output_dir: Path, namespace: str = DEFAULT_NAMESPACE) -> list[Path]:
    """Write ``trainjob.yaml`` and the ``clustertrainingruntime.yaml`` it runs on into ``output_dir``."""
    config = _config(params)
    job = build_trainjob(config, RUN_ID_PLACEHOLDER, TrainJobSettings(namespace=namespace), timeout_s=int(params["train_timeout_s"]))
    header = "# The TrainJob the train step creates for these parameters (launcher=trainjob).\n" + PLACEHOLDERS
    runtime_header = (f"# The ClusterTrainingRuntime that trainjob.yaml references (num_ps={config.num_ps}); the project ships it\n"
                      f"# in {SHIPPED_RUNTIMES}: a cluster admin applies that once (kubectl apply -k manifests/trainer).\n")
    return [_write(output_dir / TRAINJOB_FILE, header, [job]),
            _write(output_dir / RUNTIME_FILE, runtime_header, [build_runtime(RuntimeSettings(config.num_ps))])]


def render_training(params: Mapping[str, Any], output_dir: Path, namespace: str = DEFAULT_NAMESPACE) -> list[Path]:
    """Every training manifest for these parameters: the TrainJob and its runtime, and the legacy PyTorchJob
    (only where its one-Master topology fits, num_ps=1)."""
    paths = render_trainjob(params, output_dir, namespace)
    if int(params.get("num_ps", 1)) == 1:
        paths.append(render_pytorchjob(params, output_dir, namespace))
    return paths


def shipped_runtimes_text() -> str:
    """The committed manifests/trainer/clustertrainingruntimes.yaml, from the builder."""
    header = ("# Generated by `python -m components.training.render` from components/training/trainjob.py: do not edit.\n"
              "# One ClusterTrainingRuntime per parameter-server count; a TrainJob names the one for its num_ps.\n")
    runtimes = [build_runtime(RuntimeSettings(num_ps=p, image=DEFAULT_IMAGE)) for p in SHIPPED_NUM_PS]
    return header + to_yaml(runtimes)


def write_shipped_runtimes(root: Path) -> Path:
    path = root / SHIPPED_RUNTIMES
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(shipped_runtimes_text())
    return path


if __name__ == "__main__":
    print(f"wrote {write_shipped_runtimes(Path(__file__).resolve().parents[2])}")
