"""Checks of manifests against the real CRD schemas in ../shared/schemas (see its README).

``jsonschema`` alone is not enough: a CRD's structural schema does not reject unknown fields, the API
server silently drops ("prunes") them. :func:`pruned_fields` finds the fields that would be dropped.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

SCHEMAS = Path(__file__).resolve().parents[1].parent / "shared" / "schemas"
INFERENCE_SERVICE_CRD = "serving.kserve.io_inferenceservices.yaml"  # the newest (KServe master, ~0.20/0.21)
# The oldest supported controller (what Kubeflow 26.03 ships) and the newest: a manifest must fit both.
INFERENCE_SERVICE_CRDS = ("serving.kserve.io_inferenceservices-v0.18.yaml", INFERENCE_SERVICE_CRD)

requires_schemas = pytest.mark.skipif(not all((SCHEMAS / f).is_file() for f in INFERENCE_SERVICE_CRDS),
                                      reason=f"needs the KServe CRD schemas {' and '.join(INFERENCE_SERVICE_CRDS)} "
                                             "(from kserve/kserve config/crd/full/: the -v0.18 one at tag v0.18.0, the other at master) in ../shared/schemas/ "
                                             f"beside this clone ({SCHEMAS}, absent): put them there to run these checks")


@cache
def crd_schema(file: str, version: str = "v1beta1") -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the 2 MB CRD takes ~10 s with the pure-Python loader
    crd = yaml.load((SCHEMAS / file).read_text(), Loader=loader)
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise LookupError(f"{file} has no version {version!r}")


def schema_errors(manifest: dict[str, Any], file: str) -> list[str]:
    """Every jsonschema violation and every field the API server would prune, as readable lines."""
    schema = crd_schema(file)
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(manifest)]
    pruned = [f"{path}: unknown field, the API server would drop it" for path in pruned_fields(manifest, schema)]
    return errors + pruned


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, list):
        items = schema.get("items", {})
        return [p for i, v in enumerate(value) for p in pruned_fields(v, items, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    found = []
    properties, additional = schema.get("properties", {}), schema.get("additionalProperties")
    for key, sub in value.items():
        if not path and key == "metadata":
            continue  # ObjectMeta is the API server's own, not the CRD's schema
        if key in properties:
            found += pruned_fields(sub, properties[key], f"{path}.{key}")
        elif isinstance(additional, dict):
            found += pruned_fields(sub, additional, f"{path}.{key}")
        elif additional is not True:
            found.append(f"{path}.{key}")
    return found
