"""Rendering the kustomize overlays in tests: ``kubectl kustomize`` where it is installed, otherwise a
tiny pure-Python renderer.

The pure renderer is honest only for what ``manifests/`` uses, and refuses anything else: ``resources``
(files and directories), ``namespace`` (set on every resource; all of ours are namespaced) and
``patches`` given by ``path`` whose targets are matched by kind and name and merged map-by-map with lists
replaced whole — which is what kustomize's strategic merge does for the fields we patch (annotations,
RoleBinding subjects). Where kubectl is present, a test checks that both renderers agree.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "patches"}


def kubectl_available() -> bool:
    return shutil.which("kubectl") is not None


def render_with_kubectl(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed: {done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` when available, else :func:`render_in_python`."""
    return render_with_kubectl(directory) if kubectl_available() else render_in_python(directory)


def render_in_python(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_KEYS
    if unsupported:
        raise NotImplementedError(f"{directory}/kustomization.yaml uses {sorted(unsupported)}; the test renderer "
                                  f"supports only {sorted(SUPPORTED_KEYS)}")
    documents: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        documents += render_in_python(path) if path.is_dir() else load_documents(path)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise NotImplementedError(f"only 'patches: - path: FILE' is supported, got {patch}")
        for change in load_documents(directory / patch["path"]):
            apply_patch(documents, change)
    if "namespace" in kustomization:
        for document in documents:
            document["metadata"]["namespace"] = kustomization["namespace"]
    return documents


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def apply_patch(documents: list[dict[str, Any]], change: dict[str, Any]) -> None:
    key = (change["kind"], change["metadata"]["name"])
    targets = [i for i, d in enumerate(documents) if (d["kind"], d["metadata"]["name"]) == key]
    if len(targets) != 1:
        raise LookupError(f"patch for {key} matches {len(targets)} resources, expected exactly one")
    documents[targets[0]] = merge(documents[targets[0]], change)


def merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def by_kind_and_name(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}
