"""The deploy step: put a registry version behind an endpoint, smoke-test it, then promote it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.data.prepare import load_prepared
from components.deploy import local
from components.registry import Registry
from components.store import open_store

TARGETS = ("local",)
SMOKE_IMAGES = 2


def deploy(target: str, store_uri: str, dataset_prefix: str, model_name: str, version: int, model_uri: str,
           run_id: str, serving_port: int, state_dir: str) -> dict[str, Any]:
    """Deploy, smoke-test with test images, then move the production pointer (compare-and-swap)."""
    if target not in TARGETS:
        raise ValueError(f"expected deploy target in {TARGETS}, got {target!r}")
    if not state_dir:
        raise ValueError("expected local_state_dir (where the local server's pid and log live), got an empty string")
    registry = Registry(open_store(store_uri), model_name)
    before = registry.production()
    endpoint = local.start(model_uri, model_name, serving_port, Path(state_dir))
    test = load_prepared(store_uri, dataset_prefix, ("test",))
    pixels = test.images["test"][:SMOKE_IMAGES]
    passed = False
    try:
        smoke = local.smoke_test(endpoint, pixels)
        passed = True
    finally:
        if not passed:
            local.stop(Path(state_dir))  # a model that fails its smoke request is not left serving
    registry.promote(version, actor=f"pipeline-run:{run_id}", expected=before, reason="deployed by pipeline")
    return {
        "target": target,
        "url": endpoint.url,
        "model_name": model_name,
        "version": version,
        "run_id": run_id,
        "smoke": {"labels": test.labels["test"][:SMOKE_IMAGES].tolist(), **smoke},
    }
