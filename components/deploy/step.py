"""The deploy step: put a registry version behind an endpoint, smoke-test it, then promote it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.data.prepare import first_examples, read_info
from components.deploy import local
from components.registry import Registry
from components.store import Store

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


def deploy(target: str, store: Store, dataset_prefix: str, model_name: str, version: int, model_uri: str,
           run_id: str, serving_port: int, state_dir: str, kserve: KServeTarget | None = None) -> dict[str, Any]:
    """Deploy, smoke-test, then move the production pointer of the registry in ``store`` (compare-and-swap)."""
    if target not in TARGETS:
        raise ValueError(f"expected deploy target in {TARGETS}, got {target!r}")
    registry = Registry(store, model_name)
    if target == "kserve":
        return deploy_kserve(registry, version, run_id, kserve)
    return deploy_local(registry, dataset_prefix, version, model_uri, run_id, serving_port, state_dir)


def deploy_kserve(registry: Registry, version: int, run_id: str, target: KServeTarget | None) -> dict[str, Any]:
    """Create or update the InferenceService on the cluster (canary in Serverless mode) and promote."""
    from components.deploy.kserve import deploy_registry_version

    if target is None or not target.namespace:
        raise ValueError("expected a Kubernetes namespace for deploy target kserve, got none")
    record = deploy_registry_version(registry, version, run_id, target.namespace, registry.name, rollout_id=run_id,
                                     **target.settings_fields())
    return {"target": "kserve", **record.to_dict()}


def deploy_local(registry: Registry, dataset_prefix: str, version: int, model_uri: str, run_id: str,
                 serving_port: int, state_dir: str) -> dict[str, Any]:
    """Start the local KServe server, smoke-test it with test images over v1 and v2, then promote."""
    if not state_dir:
        raise ValueError("expected local_state_dir (where the local server's pid and log live), got an empty string")
    # Read before the server starts, so a data error leaves nothing running. The data set lives in the
    # registry's store: the pipeline passes one store_uri to every step.
    pixels, labels = first_examples(registry.store, read_info(registry.store, dataset_prefix), "test", SMOKE_IMAGES)
    before = registry.production()
    endpoint = local.start(model_uri, registry.name, serving_port, Path(state_dir))
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
        "model_name": registry.name,
        "version": version,
        "run_id": run_id,
        "smoke": {"labels": labels.tolist(), **smoke},
    }
