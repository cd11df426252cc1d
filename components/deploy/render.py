"""Manifests as reviewable YAML files: what the cluster steps would create for a set of parameters.

``python -m pipelines render`` calls :func:`write_manifests`; other builders (the PyTorchJob) add their
manifests through ``extra`` so that every file is written the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.deploy.inferenceservice import InferenceServiceSettings, build_inference_service

INFERENCE_SERVICE_FILE = "inferenceservice.yaml"
FILE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*\.yaml$")


def to_yaml(manifest: Mapping[str, Any]) -> str:
    """Block-style YAML in the manifest's own key order (apiVersion, kind, metadata, spec)."""
    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False)


def render_inference_service(settings: InferenceServiceSettings) -> str:
    return to_yaml(build_inference_service(settings))


def write_manifests(output_dir: Path | str, inference_service_settings: InferenceServiceSettings,
                    extra: Mapping[str, Mapping[str, Any]] | None = None) -> list[Path]:
    """Write ``inferenceservice.yaml`` and each ``extra`` manifest (file name -> manifest) into ``output_dir``."""
    files = {INFERENCE_SERVICE_FILE: build_inference_service(inference_service_settings), **(extra or {})}
    for name in files:
        if not FILE_NAME.match(name):
            raise ValueError(f"expected a plain file name like 'pytorchjob.yaml', got {name!r}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, manifest in files.items():
        path = out / name
        path.write_text(to_yaml(manifest))
        written.append(path)
    return written
