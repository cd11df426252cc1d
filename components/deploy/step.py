"""The deploy step: put a registry version behind an endpoint, smoke-test it, then promote it.

The promotion is a compare-and-swap that expects the champion the evaluate step judged the candidate
against (``champion``), not whatever production is when this step starts: a candidate judged while
production was empty is never promoted over a model promoted meanwhile. The local server is given the
version's URI pinned to its manifest's digest, and the promotion requires that same digest.

A candidate whose weights are byte for byte production's (a rerun on the same data, code and seed) is not
rolled out again: the step says so, leaves the pointer on production and returns a record naming it
(``identical_to_production``). The local target only makes sure a server serves production.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.data.prepare import first_examples, read_info
from components.deploy import local
from components.deploy.inferenceservice import DeploymentMode
from components.deploy.sizing import Sizing, SizingOverrides, derive_resources
from components.monitoring.collection import CollectionOptions
from components.registry import Registry, pinned_uri, split_pinned
from components.store import Store
from serving.client import is_ready

TARGETS = ("local", "kserve")
SMOKE_IMAGES = 2


@dataclass(frozen=True)
class KServeTarget:
    """Where and how target ``kserve`` deploys (the rest comes from InferenceServiceSettings' defaults).

    ``cpu``, ``memory`` and ``scale_target`` are an operator's overrides of what the version's profile
    derives (:mod:`components.deploy.sizing`); empty (``""``, ``0``) leaves each to the profile."""

    namespace: str
    gpus: int = 1
    mode: DeploymentMode | str = DeploymentMode.KNATIVE
    canary_percent: int = 10
    cpu: str = ""
    memory: str = ""
    scale_target: int = 0

    def __post_init__(self) -> None:
        # Parsed here, so a bad pipeline parameter fails before anything touches the cluster.
        object.__setattr__(self, "mode", DeploymentMode(self.mode))
        if not 0 <= self.canary_percent <= 100:
            raise ValueError(f"expected canary_percent between 0 (no canary) and 100, got {self.canary_percent}")
        self.overrides()  # ValueError for a malformed quantity, before the cluster too

    @property
    def scale_metric(self) -> str:
        # Standard mode is a Deployment with an HPA, which scales on resource metrics only.
        return "concurrency" if self.mode is DeploymentMode.KNATIVE else "cpu"

    def overrides(self) -> SizingOverrides:
        return SizingOverrides(self.cpu, self.memory, self.scale_target)

    def sizing(self, profile: dict[str, Any] | None, origin: str = "profile") -> Sizing:
        """The predictor's CPU, memory and scale target for a version with ``profile`` (None: it has none)."""
        return derive_resources(profile, self.overrides(), scale_metric=self.scale_metric, gpus=self.gpus, origin=origin)

    def settings_fields(self, sizing: Sizing | None = None) -> dict[str, Any]:
        """InferenceServiceSettings fields these pipeline parameters and ``sizing`` imply (render and deploy share
        this; without ``sizing``, the sizing of a version with no profile)."""
        knative = self.mode is DeploymentMode.KNATIVE
        return {
            "gpus": self.gpus,
            "mode": self.mode,
            # A canary only exists in Knative mode (Standard has one only from KServe 0.20, and 0.18 is supported):
            # Standard rolls pods and scales on CPU (HPA). 0 and 100 both mean "no canary phase".
            "canary_traffic_percent": self.canary_percent if knative and 0 < self.canary_percent < 100 else None,
            "scale_metric": self.scale_metric,
            **(sizing or self.sizing(None)).settings_fields(),
        }


def judged_champion(evaluation_path: str) -> int | None:
    """The production version the evaluate step compared the candidate with (None: production was empty)."""
    try:
        found = json.loads(Path(evaluation_path).read_text())["champion_version"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"expected the evaluate step's result with champion_version in {evaluation_path}: {exc!r}") from None
    if found is not None and (not isinstance(found, int) or isinstance(found, bool)):
        raise ValueError(f"expected champion_version to be a version number or null in {evaluation_path}, got {found!r}")
    return found


def deploy(target: str, store: Store, dataset_prefix: str, model_name: str, version: int, model_uri: str,
           run_id: str, serving_port: int, state_dir: str, champion: int | None,
           kserve: KServeTarget | None = None, collection: CollectionOptions | None = None) -> dict[str, Any]:
    """Deploy, smoke-test, then move the production pointer of the registry in ``store`` (compare-and-swap
    expecting production at ``champion``, the version the gate judged against). The record's ``summary``
    is the step's one line: what was deployed where, or that production was kept. ``collection``: what the
    server collects of its requests (off when ``None``), locally and on the cluster alike."""
    collection = collection or CollectionOptions()
    if target not in TARGETS:
        raise ValueError(f"expected deploy target in {TARGETS}, got {target!r}")
    if target == "local" and not state_dir:
        raise ValueError("expected local_state_dir (where the local server's pid and log live), got an empty string")
    registry = Registry(store, model_name)
    if (production := registry.identical_production(version)) is not None:
        return keep_production(target, registry, dataset_prefix, version, production, run_id, serving_port, state_dir, collection)
    if target == "kserve":
        record = deploy_kserve(registry, version, run_id, champion, kserve, collection=collection)
    else:
        record = deploy_local(registry, dataset_prefix, version, model_uri, run_id, serving_port, state_dir, champion, collection)
    return {**record, "summary": f"deployed {model_name} version {version} at {record['url']}"}


def keep_production(target: str, registry: Registry, dataset_prefix: str, version: int, production: int, run_id: str,
                    serving_port: int, state_dir: str, collection: CollectionOptions) -> dict[str, Any]:
    """Deploy nothing for a ``version`` whose weights are production's: the pointer stays, no revision is
    rolled out. Target ``local`` starts production's server only when none serves it (stopped since)."""
    note = (f"{registry.name} version {version} is identical to production version {production} (the same weights "
            f"SHA-256): not deployed again; production stays at version {production}")
    print(note)
    url = serve_production_locally(registry, dataset_prefix, production, serving_port, Path(state_dir), collection) if target == "local" else ""
    return {"target": target, "url": url, "model_name": registry.name, "version": production, "run_id": run_id,
            "identical_to_production": production, "pushed_version": version, "summary": note}


def serve_production_locally(registry: Registry, dataset_prefix: str, production: int, port: int, state_dir: Path,
                             collection: CollectionOptions) -> str:
    """The URL of the local server of ``production``: the one running, or a new one, smoke-tested."""
    served = local.read_state(state_dir)
    uri = registry.version_uri(production)
    if served is not None and split_pinned(served.model_uri)[0] == uri and is_ready(served.url, registry.name):
        return served.url
    pixels, _ = first_examples(registry.store, read_info(registry.store, dataset_prefix), "test", SMOKE_IMAGES)
    # Pinned to the digest its promotion recorded, as the deploy that promoted it pinned it.
    pinned = pinned_uri(uri, registry.production().record["manifest_sha256"])
    return serve_locally(registry, pinned, pixels, port, state_dir, collection)[0].url


def deploy_kserve(registry: Registry, version: int, run_id: str, champion: int | None,
                  target: KServeTarget | None, collection: CollectionOptions | None = None, **cluster: Any) -> dict[str, Any]:
    """Create or update the InferenceService on the cluster (canary in Knative mode) and promote.

    ``cluster``: ``api``, ``smoke``, ``policy``, ``clock`` of :func:`~components.deploy.kserve.deploy_registry_version`
    (default: the cluster this runs in); tests pass a fake API there."""
    from components.deploy.kserve import deploy_registry_version

    if target is None or not target.namespace:
        raise ValueError("expected a Kubernetes namespace for deploy target kserve, got none")
    # Refused before touching the cluster; the promotion then swaps on this very pointer, so a champion that
    # moved at any time after the gate is never overwritten. The predictor and the promotion pin the digest.
    before = registry.expect_production(champion)
    sizing = version_sizing(registry, version, target)
    record = deploy_registry_version(registry, version, run_id, target.namespace, registry.name, expected=before,
                                     collection=collection or CollectionOptions(), **cluster, **target.settings_fields(sizing))
    return {"target": "kserve", **record.to_dict(), "sizing": sizing.to_dict()}


def version_sizing(registry: Registry, version: int, target: KServeTarget) -> Sizing:
    """The predictor's resources for ``version``, from the profile in its manifest; printed with their sources."""
    sizing = target.sizing(registry.manifest(version).get("profile"), f"profile v{version}")
    print(f"sizing of {registry.name} version {version}:")
    for line in sizing.describe(target.scale_metric):
        print(f"  {line}")
    return sizing


def deploy_local(registry: Registry, dataset_prefix: str, version: int, model_uri: str, run_id: str,
                 serving_port: int, state_dir: str, champion: int | None, collection: CollectionOptions) -> dict[str, Any]:
    """Start the local KServe server, smoke-test it with test images over v1 and v2, then promote."""
    # Read before the server starts, so a data error leaves nothing running. The data set lives in the
    # registry's store: the pipeline passes one store_uri to every step.
    pixels, labels = first_examples(registry.store, read_info(registry.store, dataset_prefix), "test", SMOKE_IMAGES)
    before = registry.expect_production(champion)  # before the server starts: a moved pointer leaves nothing running
    digest = registry.manifest_sha256(version)
    endpoint, smoke = serve_locally(registry, pinned_uri(model_uri, digest), pixels, serving_port, Path(state_dir), collection)
    registry.promote(version, actor=f"pipeline-run:{run_id}", expected=before, reason="deployed by pipeline",
                     manifest_sha256=digest)
    return {
        "target": "local",
        "url": endpoint.url,
        "model_name": registry.name,
        "version": version,
        "run_id": run_id,
        "smoke": {"labels": labels.tolist(), **smoke},
    }


def serve_locally(registry: Registry, uri: str, pixels: np.ndarray, port: int, state_dir: Path,
                  collection: CollectionOptions) -> tuple[local.LocalEndpoint, dict]:
    """Start the local server on ``uri`` (replacing the one in ``state_dir``) and smoke-test it."""
    endpoint = local.start(uri, registry.name, port, state_dir, extra_args=collection.predictor_args())
    passed = False
    try:
        smoke = local.smoke_test(endpoint, pixels)
        passed = True
    finally:
        if not passed:
            local.stop(state_dir)  # a model that fails its smoke request is not left serving
    return endpoint, smoke
