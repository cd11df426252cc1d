"""The deploy step: put a registry version behind an endpoint, smoke-test it, then promote it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.data.prepare import load_prepared
from components.deploy import local
from components.registry import Registry
from components.store import open_store

TARGETS = ("local", "kserve")
SMOKE_IMAGES = 2


@dataclass(frozen=True)
class KServeTarget:
    """Where and how target ``kserve`` deploys (the rest comes from InferenceServiceSettings' defaults)."""

    namespace: str
    gpus: int = 1
    mode: str = "Serverless"
    canary_percent: int = 10

    def settings_fields(self) -> dict[str, Any]:
        """InferenceServiceSettings fields these pipeline parameters imply (render and deploy share this)."""
        serverless = self.mode == "Serverless"
        return {
            "gpus": self.gpus,
            "mode": self.mode,
            # A canary only exists in Serverless mode; RawDeployment rolls pods and scales on CPU (HPA).
            "canary_traffic_percent": self.canary_percent if serverless and 0 < self.canary_percent < 100 else None,
            "scale_metric": "concurrency" if serverless else "cpu",
            "scale_target": 8 if serverless else 70,
        }


def deploy(target: str, store_uri: str, dataset_prefix: str, model_name: str, version: int, model_uri: str,
           run_id: str, serving_port: int, state_dir: str, kserve: KServeTarget | None = None) -> dict[str, Any]:
    """Deploy, smoke-test, then move the production pointer (compare-and-swap)."""
    if target not in TARGETS:
        raise ValueError(f"expected deploy target in {TARGETS}, got {target!r}")
    if target == "kserve":
        return deploy_kserve(store_uri, model_name, version, run_id, kserve)
    return deploy_local(store_uri, dataset_prefix, model_name, version, model_uri, run_id, serving_port, state_dir)


def deploy_kserve(store_uri: str, model_name: str, version: int, run_id: str, target: KServeTarget | None) -> dict[str, Any]:
    """Create or update the InferenceService on the cluster (canary in Serverless mode) and promote."""
    from components.deploy.kserve import deploy_registry_version

    if target is None or not target.namespace:
        raise ValueError("expected a Kubernetes namespace for deploy target kserve, got none")
    registry = Registry(open_store(store_uri), model_name)
    record = deploy_registry_version(registry, version, run_id, target.namespace, model_name, rollout_id=run_id,
                                     **target.settings_fields())
    return {"target": "kserve", **record.to_dict()}


def deploy_local(store_uri: str, dataset_prefix: str, model_name: str, version: int, model_uri: str, run_id: str,
                 serving_port: int, state_dir: str) -> dict[str, Any]:
    """Start the local KServe server, smoke-test it with test images over v1 and v2, then promote."""
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
        "target": "local",
        "url": endpoint.url,
        "model_name": model_name,
        "version": version,
        "run_id": run_id,
        "smoke": {"labels": test.labels["test"][:SMOKE_IMAGES].tolist(), **smoke},
    }
