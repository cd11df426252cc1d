"""The deploy step's state machine (target ``kserve``) against a FAKE Kubernetes API.

The Kubernetes API (and the KServe/Knative controllers behind it) is the one boundary these tests cannot
run here, so :class:`FakeCluster` stands in for it: an in-memory object store with the API server's
rules that matter to the step (404, 409 on a stale ``resourceVersion``, JSON merge patch, generations)
and a tiny controller that reconciles on every read — new revisions when the pod template changes,
canary traffic splits, readiness after a few polls, pods for Standard-mode rolling updates. Everything
else is real: the manifest builder, the registry on a LocalStore in ``tmp_path``, the rollback logic.
Time is a fake clock, so timeouts take no wall time.
"""

from __future__ import annotations

import copy
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.deploy.inferenceservice import (
    SPEC_HASH_ANNOTATION,
    DeploymentMode,
    InferenceServiceSettings,
)
from components.deploy.kserve import DeploymentRecord, StepCancelled, deploy_registry_version, deploy_to_kserve
from components.deploy.kserve_api import KubernetesInferenceServiceApi, recent_events
from components.deploy.rollout import RolloutPolicy, SmokeTarget, SmokeTestError, merge_diff
from components.deploy.step import KServeTarget, deploy_kserve
from components.errors import ConflictError, DeployError
from components.kube import ApiError
from components.registry import Registry, pinned_uri
from components.store import LocalStore
from tests.helpers import sample_profile

MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
NS = "models"
NAME = "mnist"
POLICY = RolloutPolicy(ready_timeout_s=60, promote_timeout_s=60, rollback_timeout_s=60, poll_interval_s=5)


# -- the fake cluster -------------------------------------------------------------------------------


def apply_merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def recorded_mode(obj: dict[str, Any]) -> str:
    """The mode the controller recorded at creation (status.deploymentMode); it never changes afterwards."""
    return obj.get("status", {}).get("deploymentMode") or obj["metadata"].get("annotations", {}).get(MODE_ANNOTATION, "Knative")


def template_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj["spec"]["predictor"].items() if k != "canaryTrafficPercent"}


@dataclass
class Revision:
    name: str
    template: dict[str, Any]
    born: int  # the poll count when it was created


@dataclass
class FakeCluster:
    """The API server plus a minimal KServe/Knative controller. ``healthy(template)`` decides whether the
    pods of a revision ever become ready; ``crash`` makes them crash-loop instead of just never readying."""

    namespace: str = NS
    ready_after: int = 2  # polls until a healthy revision is ready
    healthy: Any = lambda template: True
    crash: bool = False
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    conflicts: int = 0  # the next N patches answer 409
    get_error: ApiError | None = None
    create_error: ApiError | None = None
    revisions: list[Revision] = field(default_factory=list)
    rolled_out: str | None = None
    polls: int = 0
    _rv: int = 0

    # the API
    def get(self, name: str) -> dict[str, Any]:
        self.calls.append(("get", name))
        if self.get_error is not None:
            raise self.get_error
        if name not in self.objects:
            raise ApiError(404, "Not Found", f'inferenceservices.serving.kserve.io "{name}" not found')
        self.polls += 1
        self.reconcile(self.objects[name])
        return copy.deepcopy(self.objects[name])

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", copy.deepcopy(body)))
        if self.create_error is not None:
            raise self.create_error
        name = body["metadata"]["name"]
        if name in self.objects:
            raise ApiError(409, "Conflict", "already exists")
        obj = copy.deepcopy(body)
        obj["metadata"].update(generation=1, resourceVersion=self._next_rv())
        self.objects[name] = obj
        return copy.deepcopy(obj)

    def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", copy.deepcopy(patch)))
        obj = self.objects[name]
        if self.conflicts > 0:
            self.conflicts -= 1
            obj["metadata"]["resourceVersion"] = self._next_rv()  # someone else wrote in between
        wanted_rv = patch.get("metadata", {}).get("resourceVersion")
        if wanted_rv is not None and wanted_rv != obj["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified; please apply your changes to the latest version")
        updated = apply_merge_patch(obj, patch)
        self.admit_mode(obj, updated)
        if updated["spec"] != obj["spec"]:
            updated["metadata"]["generation"] = obj["metadata"]["generation"] + 1
        updated["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[name] = updated
        return copy.deepcopy(updated)

    @staticmethod
    def admit_mode(old: dict[str, Any], new: dict[str, Any]) -> None:
        """KServe's validating webhook: the annotation must equal status.deploymentMode, compared as strings."""
        recorded = old.get("status", {}).get("deploymentMode")
        wanted = new["metadata"].get("annotations", {}).get(MODE_ANNOTATION)
        if recorded and wanted is not None and wanted != recorded:
            raise ApiError(403, "Forbidden", 'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the '
                                             f"request: update rejected: deploymentMode cannot be changed from '{recorded}' to '{wanted}'")

    def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        self.objects.pop(name)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [{"type": "Warning", "reason": "FailedScheduling", "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu",
                 "involvedObject": {"kind": "Pod", "name": f"{name}-predictor-00002-deployment-abc"},
                 "lastTimestamp": "2026-11-21T10:00:00Z"}]

    def pods(self, name: str) -> list[dict[str, Any]]:
        return [self.pod(rev, i) for rev in self.revisions_with_pods() for i in range(1)]

    # the controller
    def reconcile(self, obj: dict[str, Any]) -> None:
        template = template_of(obj)
        if not self.revisions or self.revisions[-1].template != template:
            self.revisions.append(Revision(f"{NAME}-predictor-{len(self.revisions) + 1:05d}", template, self.polls))
        latest = self.revisions[-1]
        ready = self.is_ready(latest)
        canary = obj["spec"]["predictor"].get("canaryTrafficPercent")
        if ready and (canary is None or canary == 100 or self.rolled_out is None):
            self.rolled_out = latest.name
        obj["status"] = self.status(obj, latest, ready, canary)

    def is_ready(self, revision: Revision) -> bool:
        return self.healthy(revision.template) and self.polls - revision.born >= self.ready_after

    def status(self, obj: dict[str, Any], latest: Revision, ready: bool, canary: int | None) -> dict[str, Any]:
        ready_names = [r.name for r in self.revisions if self.is_ready(r)]
        conditions = [{"type": "Ready", "status": "True" if ready else "False",
                       **({} if ready else {"reason": "RevisionMissing", "message": f"Revision {latest.name} is not ready"})}]
        return {
            "deploymentMode": recorded_mode(obj),
            "observedGeneration": obj["metadata"]["generation"],
            "url": f"http://{NAME}.{NS}.example.com",
            "address": {"url": f"http://{NAME}-predictor.{NS}.svc.cluster.local"},
            "conditions": conditions,
            "components": {"predictor": {
                "latestCreatedRevision": latest.name,
                "latestReadyRevision": ready_names[-1] if ready_names else None,
                "latestRolledoutRevision": self.rolled_out,
                "traffic": self.traffic(latest, ready, canary),
            }},
        }

    def traffic(self, latest: Revision, ready: bool, canary: int | None) -> list[dict[str, Any]]:
        tagged = {"revisionName": latest.name, "latestRevision": True, "tag": "latest",
                  "url": f"http://latest-{NAME}-predictor.{NS}.example.com"}
        if self.rolled_out is None or self.rolled_out == latest.name:
            return [{**tagged, "percent": 100}] if ready else []
        share = canary if (canary is not None and ready) else 0
        return [{"revisionName": self.rolled_out, "tag": "prev", "percent": 100 - share}, {**tagged, "percent": share}]

    def revisions_with_pods(self) -> list[Revision]:
        return [r for r in self.revisions if r.name == self.rolled_out or r is self.revisions[-1]]

    def pod(self, rev: Revision, index: int) -> dict[str, Any]:
        ready = self.is_ready(rev)
        crashing = self.crash and not self.healthy(rev.template)
        state = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}} if crashing else {"running": {}}
        return {
            "metadata": {"name": f"{rev.name}-deployment-{index}", "annotations": dict(rev.template.get("annotations", {}))},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "containerStatuses": [{"name": "kserve-container", "state": state}]},
        }

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def writes(self) -> list[tuple[str, Any]]:
        return [c for c in self.calls if c[0] in ("create", "patch", "delete")]


class RawCluster(FakeCluster):
    """Standard mode (was RawDeployment): no revisions or traffic; a rolling update replaces pods once the new ones are ready."""

    def reconcile(self, obj: dict[str, Any]) -> None:
        template = template_of(obj)
        if not self.revisions or self.revisions[-1].template != template:
            self.revisions.append(Revision(f"{NAME}-predictor-rs{len(self.revisions) + 1}", template, self.polls))
        latest = self.revisions[-1]
        if self.is_ready(latest):
            self.rolled_out = latest.name
        ready = self.rolled_out is not None  # the Deployment stays Available while old pods serve
        obj["status"] = {
            "deploymentMode": recorded_mode(obj),
            "observedGeneration": obj["metadata"]["generation"],
            "url": f"http://{NAME}-{NS}.example.com",
            "address": {"url": f"http://{NAME}-predictor.{NS}.svc.cluster.local"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "components": {"predictor": {}},
        }


class FakeClock:
    def __init__(self, on_sleep: Any = None):
        self.now = 0.0
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(self.now)


class RecordingSmoke:
    def __init__(self, fail: bool = False):
        self.targets: list[SmokeTarget] = []
        self.fail = fail

    def __call__(self, target: SmokeTarget) -> None:
        self.targets.append(target)
        if self.fail:
            raise SmokeTestError(f"GET {target.url}/v2/models/{target.model_name}/ready: expected 200, got 503")


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(LocalStore(tmp_path / "store"), NAME)
    for n in (1, 2):
        folder = tmp_path / f"model{n}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights %d" % n)
        (folder / "model.json").write_text(json.dumps({"arch": "cnn", "n": n}))
        reg.push(folder, {"lineage": {"run_id": f"train-{n}"}})
    return reg


def settings(version: int, mode: DeploymentMode = DeploymentMode.KNATIVE, **extra: Any) -> InferenceServiceSettings:
    """The settings the deploy step's defaults give (a 10 % canary in Knative mode)."""
    extra.setdefault("canary_traffic_percent", 10 if mode is DeploymentMode.KNATIVE else None)
    return InferenceServiceSettings(
        name=NAME, namespace=NS, model_name=NAME, model_version=version, mode=mode,
        model_uri=f"https://acct.blob.core.windows.net/models/models/{NAME}/versions/{version}",
        image="kfpps.azurecr.io/kfp-ps-classifier:0.1.0",
        scale_metric="concurrency" if mode is DeploymentMode.KNATIVE else "cpu", **extra,
    )


def deploy(cluster: FakeCluster, registry: Registry, version: int, smoke: Any = None, clock: FakeClock | None = None,
           mode: DeploymentMode = DeploymentMode.KNATIVE, policy: RolloutPolicy = POLICY) -> DeploymentRecord:
    return deploy_to_kserve(cluster, settings(version, mode), registry, version, f"run-{version}",
                            smoke or RecordingSmoke(), policy, clock or FakeClock())


def unhealthy_version(version: int) -> Any:
    return lambda template: f"/versions/{version}" not in json.dumps(template)


def serving_traffic(cluster: FakeCluster) -> dict[str, int]:
    status = cluster.objects[NAME]["status"]["components"]["predictor"]
    return {t["revisionName"]: t["percent"] for t in status["traffic"]}


def live_model_uri(cluster: FakeCluster) -> str:
    """What the live predictor container downloads (its ``--model-uri``)."""
    args = cluster.objects[NAME]["spec"]["predictor"]["containers"][0]["args"]
    return args[args.index("--model-uri") + 1]


# -- Serverless -------------------------------------------------------------------------------------


def test_first_deploy_creates_the_service_waits_smokes_and_moves_the_pointer(registry: Registry) -> None:
    cluster, smoke = FakeCluster(), RecordingSmoke()

    record = deploy(cluster, registry, 1, smoke)

    assert [c[0] for c in cluster.writes()] == ["create"]
    created = cluster.writes()[0][1]
    assert created["metadata"]["name"] == NAME and "canaryTrafficPercent" not in created["spec"]["predictor"]
    assert smoke.targets == [SmokeTarget(url=f"http://{NAME}-predictor.{NS}.svc.cluster.local", model_name=NAME,
                                         revision=f"{NAME}-predictor-00001")]
    assert record == DeploymentRecord(service=f"{NS}/{NAME}", url=f"http://{NAME}.{NS}.example.com",
                                      revision=f"{NAME}-predictor-00001", version=1, previous_version=None,
                                      run_id="run-1", mode="Knative")
    assert registry.production().version == 1
    assert registry.history()[-1]["by"] == "kfp-run:run-1"


def test_update_rolls_out_as_a_canary_then_promotes_to_full_traffic(registry: Registry) -> None:
    cluster, smoke = FakeCluster(), RecordingSmoke()
    deploy(cluster, registry, 1)
    cluster.calls.clear()

    record = deploy(cluster, registry, 2, smoke)

    patches = [c[1] for c in cluster.writes()]
    assert [p["spec"]["predictor"]["canaryTrafficPercent"] for p in patches] == [10, 100]
    assert smoke.targets[0].url == f"http://latest-{NAME}-predictor.{NS}.example.com"  # the canary's own URL
    assert smoke.targets[0].revision == f"{NAME}-predictor-00002"
    assert serving_traffic(cluster) == {f"{NAME}-predictor-00002": 100}
    assert live_model_uri(cluster) == pinned_uri(settings(2).model_uri, registry.manifest_sha256(2))
    assert (record.version, record.previous_version, record.revision) == (2, 1, f"{NAME}-predictor-00002")
    assert registry.production().version == 2


def test_a_revision_that_never_becomes_ready_is_rolled_back_and_fails_the_step(registry: Registry) -> None:
    cluster = FakeCluster(healthy=unhealthy_version(2))
    deploy(cluster, registry, 1)
    smoke = RecordingSmoke()

    with pytest.raises(DeployError) as failure:
        deploy(cluster, registry, 2, smoke)

    message = str(failure.value)
    assert "timed out after 60s" in message
    assert f"revision {NAME}-predictor-00001 serves all requests (verified)" in message
    assert "Ready=False RevisionMissing" in message  # the service's conditions
    assert "Insufficient nvidia.com/gpu" in message  # and its recent events
    assert "production pointer unchanged (version 1)" in message
    assert serving_traffic(cluster) == {f"{NAME}-predictor-00001": 100, f"{NAME}-predictor-00002": 0}
    assert cluster.writes()[-1][1]["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert smoke.targets == []  # never smoke-tested a revision that was not ready
    assert registry.production().version == 1


def test_a_failed_smoke_request_rolls_back_the_canary(registry: Registry) -> None:
    cluster = FakeCluster()
    deploy(cluster, registry, 1)

    with pytest.raises(DeployError, match="expected 200, got 503"):
        deploy(cluster, registry, 2, RecordingSmoke(fail=True))

    assert serving_traffic(cluster)[f"{NAME}-predictor-00001"] == 100
    assert registry.production().version == 1


def test_a_failed_first_deploy_deletes_the_service_it_created(registry: Registry) -> None:
    cluster = FakeCluster(healthy=unhealthy_version(1))

    with pytest.raises(DeployError, match="deleted the InferenceService this run created"):
        deploy(cluster, registry, 1)

    assert NAME not in cluster.objects
    assert registry.production().version is None


def test_a_conflict_on_update_is_retried_after_reading_again(registry: Registry) -> None:
    cluster = FakeCluster()
    deploy(cluster, registry, 1)
    cluster.calls.clear()
    cluster.conflicts = 1

    record = deploy(cluster, registry, 2)

    patches = [c[1] for c in cluster.writes()]
    assert len(patches) == 3  # canary (409), canary again, promotion
    assert patches[0]["metadata"]["resourceVersion"] != patches[1]["metadata"]["resourceVersion"]
    assert record.version == 2 and registry.production().version == 2


def test_endless_conflicts_fail_the_step_after_a_bounded_number_of_tries(registry: Registry) -> None:
    cluster = FakeCluster()
    deploy(cluster, registry, 1)
    cluster.conflicts = 100

    with pytest.raises(DeployError, match="still conflicting after 4 attempts"):
        deploy(cluster, registry, 2)

    assert registry.production().version == 1


def test_a_cancelled_step_rolls_back_and_stays_cancelled(registry: Registry) -> None:
    cluster = FakeCluster(ready_after=100)
    deploy(cluster, registry, 1, policy=RolloutPolicy(ready_timeout_s=10_000, poll_interval_s=5))

    def interrupt(now: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        deploy(cluster, registry, 2, clock=FakeClock(on_sleep=interrupt))

    assert cluster.objects[NAME]["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert registry.production().version == 1


def test_sigterm_during_the_wait_cancels_the_step_and_rolls_back(registry: Registry) -> None:
    cluster = FakeCluster(ready_after=100)
    deploy(cluster, registry, 1, policy=RolloutPolicy(ready_timeout_s=10_000, poll_interval_s=5))

    def terminate(now: float) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # what KFP does to a cancelled step's pod

    with pytest.raises(StepCancelled):
        deploy(cluster, registry, 2, clock=FakeClock(on_sleep=terminate))

    assert cluster.objects[NAME]["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert registry.production().version == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone afterwards


def test_an_api_error_other_than_404_on_get_fails_clearly_without_creating(registry: Registry) -> None:
    cluster = FakeCluster(get_error=ApiError(403, "Forbidden", 'cannot get resource "inferenceservices"'))

    with pytest.raises(DeployError) as failure:
        deploy(cluster, registry, 1)

    assert "could not read InferenceService models/mnist: 403 Forbidden" in str(failure.value)
    assert "expected 200, or 404" in str(failure.value)
    assert cluster.writes() == []
    assert registry.production().version is None


def test_a_rejected_create_fails_with_the_api_reason(registry: Registry) -> None:
    cluster = FakeCluster(create_error=ApiError(422, "Unprocessable Entity", "spec.predictor: Invalid value"))

    with pytest.raises(DeployError, match="could not create InferenceService models/mnist: 422 Unprocessable Entity"):
        deploy(cluster, registry, 1)


def test_redeploying_the_serving_spec_patches_nothing_and_keeps_the_pointer_moving(registry: Registry) -> None:
    cluster = FakeCluster()
    deploy(cluster, registry, 1)
    cluster.calls.clear()

    record = deploy(cluster, registry, 1)

    assert cluster.writes() == []
    assert record.revision == f"{NAME}-predictor-00001"


def test_a_pointer_moved_by_another_run_fails_without_undoing_the_rollout(registry: Registry) -> None:
    cluster = FakeCluster()

    def race(target: SmokeTarget) -> None:
        registry.promote(2, actor="kfp-run:other")  # another run wins the pointer meanwhile

    with pytest.raises(DeployError, match="version 1 is live on models/mnist, but it was not promoted: .*lost a race"):
        deploy(cluster, registry, 1, smoke=race)

    assert registry.production().version == 2
    assert NAME in cluster.objects  # not deleted: the other run may depend on the service


def test_switching_deployment_mode_in_place_is_refused(registry: Registry) -> None:
    cluster = FakeCluster()
    deploy(cluster, registry, 1)

    with pytest.raises(DeployError, match="runs in Knative mode, expected Standard"):
        deploy(cluster, registry, 2, mode=DeploymentMode.STANDARD)


def test_a_service_created_under_the_old_mode_name_keeps_that_spelling_on_update(registry: Registry) -> None:
    # KServe's webhook compares the annotation with status.deploymentMode as strings (kserve/kserve#4798).
    cluster = FakeCluster()
    deploy(cluster, registry, 1)
    live = cluster.objects[NAME]  # as an older KServe recorded it
    live["metadata"]["annotations"][MODE_ANNOTATION] = "Serverless"
    live["status"]["deploymentMode"] = "Serverless"
    cluster.calls.clear()

    record = deploy(cluster, registry, 2)

    patches = [c[1] for c in cluster.writes()]
    assert patches[0]["metadata"]["annotations"][MODE_ANNOTATION] == "Serverless"
    assert cluster.objects[NAME]["metadata"]["annotations"][MODE_ANNOTATION] == "Serverless"
    assert record.version == 2 and registry.production().version == 2


def test_a_live_service_in_a_mode_this_project_does_not_deploy_is_refused(registry: Registry) -> None:
    cluster = FakeCluster()
    deploy(cluster, registry, 1)
    cluster.objects[NAME]["metadata"]["annotations"][MODE_ANNOTATION] = "ModelMesh"
    cluster.objects[NAME]["status"]["deploymentMode"] = "ModelMesh"

    with pytest.raises(DeployError, match="runs in ModelMesh mode, expected Knative"):
        deploy(cluster, registry, 2)


# -- Standard mode ----------------------------------------------------------------------------------


def test_raw_deployment_update_is_a_rolling_update_that_waits_for_new_pods(registry: Registry) -> None:
    cluster = RawCluster()
    deploy(cluster, registry, 1, mode=DeploymentMode.STANDARD)
    cluster.calls.clear()

    record = deploy(cluster, registry, 2, mode=DeploymentMode.STANDARD)

    patches = [c[1] for c in cluster.writes()]
    assert len(patches) == 1 and "canaryTrafficPercent" not in patches[0]["spec"]["predictor"]
    new_hash = cluster.objects[NAME]["spec"]["predictor"]["annotations"][SPEC_HASH_ANNOTATION]
    assert {p["metadata"]["annotations"][SPEC_HASH_ANNOTATION] for p in cluster.pods(NAME)} == {new_hash}
    assert record.mode == "Standard" and registry.production().version == 2


def test_raw_deployment_crash_loop_fails_fast_and_restores_the_previous_spec(registry: Registry) -> None:
    cluster = RawCluster(healthy=unhealthy_version(2), crash=True)
    deploy(cluster, registry, 1, mode=DeploymentMode.STANDARD)
    clock = FakeClock()

    with pytest.raises(DeployError) as failure:
        deploy(cluster, registry, 2, mode=DeploymentMode.STANDARD, clock=clock)

    assert "CrashLoopBackOff" in str(failure.value)
    assert "restored the previous spec (verified)" in str(failure.value)
    assert clock.now < POLICY.ready_timeout_s  # failed fast, did not sit out the timeout
    assert live_model_uri(cluster) == pinned_uri(settings(1).model_uri, registry.manifest_sha256(1))
    assert registry.production().version == 1


# -- the step's entry point -------------------------------------------------------------------------


def test_the_step_serves_the_version_from_the_registrys_own_blob_uri(registry: Registry) -> None:
    registry.store.uri = "https://acct.blob.core.windows.net/models"  # the container the cluster reads
    cluster = FakeCluster()

    record = deploy_registry_version(registry, 2, "run-9", NS, NAME, api=cluster, smoke=RecordingSmoke(),
                                     policy=POLICY, clock=FakeClock(), gpus=0)

    digest = registry.manifest_sha256(2)
    assert live_model_uri(cluster) == f"https://acct.blob.core.windows.net/models/models/mnist/versions/2#manifest-sha256={digest}"
    container = cluster.objects[NAME]["spec"]["predictor"]["containers"][0]
    assert "STORAGE_URI" not in {e["name"] for e in container["env"]}  # no storage initializer: the predictor downloads
    assert cluster.objects[NAME]["spec"]["predictor"]["annotations"]["kfp-ps-classifier/model-version"] == "2"
    assert record.run_id == "run-9" and registry.production().version == 2


def test_settings_pinned_to_another_manifest_are_refused_before_touching_the_cluster(registry: Registry) -> None:
    cluster = FakeCluster()
    stale = settings(2, manifest_sha256="0" * 64)

    with pytest.raises(DeployError, match=f"found {registry.manifest_sha256(2)}: it changed since"):
        deploy_to_kserve(cluster, stale, registry, 2, "run-2", RecordingSmoke(), POLICY, FakeClock())

    assert cluster.calls == []


def test_the_step_refuses_a_registry_the_cluster_cannot_read(registry: Registry) -> None:
    with pytest.raises(ValueError, match="push the model to Blob first"):
        deploy_registry_version(registry, 2, "run-9", NS, NAME, api=FakeCluster(), smoke=RecordingSmoke())


def test_the_deploy_parameters_accept_the_old_mode_names_and_refuse_others() -> None:
    assert KServeTarget(NS, mode="RawDeployment").settings_fields() == {
        "gpus": 1, "mode": DeploymentMode.STANDARD, "canary_traffic_percent": None, "scale_metric": "cpu", "scale_target": 70,
        "cpu": "1", "memory": "2Gi"}
    assert KServeTarget(NS, mode="Serverless").mode is DeploymentMode.KNATIVE
    assert KServeTarget(NS).mode is DeploymentMode.KNATIVE  # KServe's shipped default, annotated explicitly
    with pytest.raises(ValueError, match="expected deployment_mode 'Standard' or 'Knative'.*got 'Raw'"):
        KServeTarget(NS, mode="Raw")


# -- canary_percent: from the pipeline parameter through the deploy step to the (fake) cluster --------


class TrafficAtSmoke(RecordingSmoke):
    """Records, at each smoke request, the traffic split and the live predictor spec of the fake cluster."""

    def __init__(self, cluster: FakeCluster):
        super().__init__()
        self.cluster, self.traffic, self.predictors = cluster, [], []

    def __call__(self, target: SmokeTarget) -> None:
        self.traffic.append(serving_traffic(self.cluster))
        self.predictors.append(copy.deepcopy(self.cluster.objects[NAME]["spec"]["predictor"]))
        super().__call__(target)


@pytest.fixture
def blob_registry(registry: Registry) -> Registry:
    registry.store.uri = "https://acct.blob.core.windows.net/models"  # the container the cluster reads
    return registry


def deploy_step(cluster: FakeCluster, registry: Registry, version: int, target: KServeTarget, champion: int | None,
                smoke: RecordingSmoke | None = None) -> dict[str, Any]:
    """The deploy step's kserve path exactly as the component calls it, against the fake API."""
    return deploy_kserve(registry, version, f"run-{version}", champion, target, api=cluster, smoke=smoke or RecordingSmoke(),
                         policy=POLICY, clock=FakeClock())


def rendered_predictor(tmp_path: Path, canary_percent: int) -> dict[str, Any]:
    """What `python -m pipelines render` writes for the same pipeline parameters."""
    from pipelines.cli import main

    main(["render", "--output-dir", str(tmp_path), "--version", "2", "--param", "store_uri=https://acct.blob.core.windows.net/models",
          "--param", f"model_name={NAME}", "--param", f"kserve_namespace={NS}", "--param", f"canary_percent={canary_percent}"])
    return yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())["spec"]["predictor"]


def shape_of(predictor: dict[str, Any]) -> dict[str, Any]:
    """A predictor spec without what is per run (rollout id, spec hash) or per registry read (the digest pin)."""
    shaped = {k: v for k, v in predictor.items() if k != "annotations"}
    (container,) = shaped["containers"]
    args = list(container["args"])
    args[args.index("--model-uri") + 1] = args[args.index("--model-uri") + 1].partition("#")[0]
    return {**shaped, "containers": [{**container, "args": args}]}


@pytest.mark.parametrize("percent", [10, 50])
def test_canary_percent_sets_the_canary_share_then_promotes_and_matches_what_render_shows(
        blob_registry: Registry, tmp_path: Path, percent: int) -> None:
    cluster, target = FakeCluster(), KServeTarget(NS, canary_percent=percent)
    deploy_step(cluster, blob_registry, 1, target, champion=None)
    cluster.calls.clear()
    smoke = TrafficAtSmoke(cluster)

    record = deploy_step(cluster, blob_registry, 2, target, champion=1, smoke=smoke)

    patches = [c[1]["spec"]["predictor"]["canaryTrafficPercent"] for c in cluster.writes()]
    assert patches == [percent, 100]  # the canary at the parameter's share, then the promotion
    assert smoke.traffic == [{f"{NAME}-predictor-00001": 100 - percent, f"{NAME}-predictor-00002": percent}]
    assert smoke.targets[0].url == f"http://latest-{NAME}-predictor.{NS}.example.com"  # the canary's own URL
    assert serving_traffic(cluster) == {f"{NAME}-predictor-00002": 100}
    assert shape_of(smoke.predictors[0]) == shape_of(rendered_predictor(tmp_path, percent))  # one source of settings
    assert record["version"] == 2 and blob_registry.production().version == 2


def test_canary_percent_0_replaces_the_revision_straight_without_a_canary(blob_registry: Registry, tmp_path: Path) -> None:
    cluster, target = FakeCluster(), KServeTarget(NS, canary_percent=0)
    deploy_step(cluster, blob_registry, 1, target, champion=None)
    cluster.calls.clear()
    smoke = TrafficAtSmoke(cluster)

    deploy_step(cluster, blob_registry, 2, target, champion=1, smoke=smoke)

    (patch,) = [c[1] for c in cluster.writes()]  # one patch, no promotion step
    assert patch["spec"]["predictor"].get("canaryTrafficPercent") is None
    assert smoke.traffic == [{f"{NAME}-predictor-00002": 100}]  # all traffic moved once the new revision was ready
    assert smoke.targets[0].url == f"http://{NAME}-predictor.{NS}.svc.cluster.local"
    assert "canaryTrafficPercent" not in rendered_predictor(tmp_path, 0)
    assert shape_of(smoke.predictors[0]) == shape_of(rendered_predictor(tmp_path, 0))
    assert blob_registry.production().version == 2


def test_a_canary_after_a_straight_replace_starts_from_the_serving_revision(blob_registry: Registry) -> None:
    cluster = FakeCluster()
    deploy_step(cluster, blob_registry, 1, KServeTarget(NS, canary_percent=0), champion=None)
    cluster.calls.clear()
    smoke = TrafficAtSmoke(cluster)

    deploy_step(cluster, blob_registry, 2, KServeTarget(NS, canary_percent=50), champion=1, smoke=smoke)

    assert smoke.traffic == [{f"{NAME}-predictor-00001": 50, f"{NAME}-predictor-00002": 50}]


# -- sizing: from the version's profile through the deploy step to the (fake) cluster, and what render shows --


def push_profiled(registry: Registry, tmp_path: Path) -> int:
    """A version whose manifest carries a profile (onnx chosen: peak RSS 612 MiB, p99 within 50 ms up to 8)."""
    folder = tmp_path / "profiled"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights 3")
    (folder / "model.json").write_text(json.dumps({"arch": "cnn", "n": 3}))
    return registry.push(folder, {"lineage": {"run_id": "train-3"}, "profile": sample_profile()})


def rendered(tmp_path: Path, version: int, *extra: str) -> tuple[dict[str, Any], str]:
    """The predictor `python -m pipelines render` writes, and what it prints."""
    import contextlib
    import io

    from pipelines.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["render", "--output-dir", str(tmp_path / "rendered"), "--version", str(version), "--param",
              "store_uri=https://acct.blob.core.windows.net/models", "--param", f"model_name={NAME}", "--param",
              f"kserve_namespace={NS}", *extra])
    return yaml.safe_load((tmp_path / "rendered" / "inferenceservice.yaml").read_text())["spec"]["predictor"], out.getvalue()


def test_the_service_is_sized_from_the_versions_profile_and_render_shows_the_same_with_its_source(
        blob_registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    version = push_profiled(blob_registry, tmp_path)
    cluster = FakeCluster()

    record = deploy_step(cluster, blob_registry, version, KServeTarget(NS), champion=None)

    live = cluster.objects[NAME]["spec"]["predictor"]
    resources = live["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "2", "memory": "2560Mi", "nvidia.com/gpu": "1"}
    assert live["scaleMetric"] == "concurrency" and live["scaleTarget"] == 8
    assert record["sizing"]["memory"] == {"value": "2560Mi", "source": f"profile v{version}: 2 server processes (one per CPU) × "
                                          "peak RSS 612 MiB + their supervisor 300 MiB (onnx) ×1.5 = 2286 MiB, rounded up to 2560Mi"}
    assert f"memory                     2560Mi  profile v{version}: 2 server processes" in capsys.readouterr().out  # the step's log
    manifest = tmp_path / "MANIFEST.json"
    manifest.write_text(json.dumps(blob_registry.manifest(version)))  # what `registry show --json` prints
    predictor, printed = rendered(tmp_path, version, "--manifest", str(manifest))
    predictor.pop("canaryTrafficPercent")  # render shows the canary share an update would get; a first deploy has none
    assert shape_of(predictor) == shape_of(live)  # one source of sizing for render and deploy
    assert f"scale target (concurrency) 8       profile v{version}: highest concurrency with p99 within 50 ms" in printed
    assert f"cpu                        2       profile v{version}: 1500 req/s × 0.90 ms server CPU per request" in printed


def test_an_operator_override_reaches_the_cluster_and_render_says_so(blob_registry: Registry, tmp_path: Path) -> None:
    version = push_profiled(blob_registry, tmp_path)
    cluster = FakeCluster()

    deploy_step(cluster, blob_registry, version, KServeTarget(NS, memory="3Gi", scale_target=4), champion=None)

    live = cluster.objects[NAME]["spec"]["predictor"]
    assert live["containers"][0]["resources"]["limits"]["memory"] == "3Gi" and live["scaleTarget"] == 4
    assert live["containers"][0]["resources"]["limits"]["cpu"] == "2"  # not overridden: the profile's
    predictor, printed = rendered(tmp_path, version, "--param", "serving_memory=3Gi", "--param", "serving_scale_target=4")
    assert predictor["containers"][0]["resources"]["limits"]["memory"] == "3Gi" and predictor["scaleTarget"] == 4
    assert "memory                     3Gi     operator override" in printed
    assert "cpu                        1       default: no profile" in printed  # no --manifest: no profile to size from


def test_a_version_without_a_profile_is_deployed_with_the_defaults(blob_registry: Registry) -> None:
    cluster = FakeCluster()

    record = deploy_step(cluster, blob_registry, 1, KServeTarget(NS), champion=None)

    limits = cluster.objects[NAME]["spec"]["predictor"]["containers"][0]["resources"]["limits"]
    assert (limits["cpu"], limits["memory"]) == ("1", "2Gi")
    assert {s["source"] for s in record["sizing"].values()} == {"default: no profile"}


def test_the_step_refuses_before_the_cluster_when_production_moved_since_the_gate(blob_registry: Registry) -> None:
    cluster = FakeCluster()
    blob_registry.promote(1, actor="kfp-run:other")

    with pytest.raises(ConflictError, match="moved from version none"):
        deploy_step(cluster, blob_registry, 2, KServeTarget(NS), champion=None)

    assert cluster.calls == []


def test_the_promotion_swaps_on_the_pointer_the_caller_judged_against_not_a_later_read(registry: Registry) -> None:
    cluster = FakeCluster()
    judged = registry.production()  # empty, when the gate judged the candidate
    registry.promote(2, actor="kfp-run:other")  # another run wins before this rollout even starts

    with pytest.raises(DeployError, match="version 1 is live on models/mnist, but it was not promoted: .*lost a race"):
        deploy_to_kserve(cluster, settings(1), registry, 1, "run-1", RecordingSmoke(), POLICY, FakeClock(), expected=judged)

    assert registry.production().version == 2


def test_a_manifest_changed_during_the_rollout_is_not_promoted(registry: Registry) -> None:
    cluster = FakeCluster()

    def rewrite_manifest(target: SmokeTarget) -> None:
        path = registry.store.root / registry.version_prefix(1) / "MANIFEST.json"
        path.write_text(path.read_text() + "\n")  # the same files listed, other bytes than the pods were pinned to

    with pytest.raises(DeployError, match="not promoted: MANIFEST.json of mnist version 1 has SHA-256 .* expected"):
        deploy(cluster, registry, 1, smoke=rewrite_manifest)

    assert registry.production().version is None


# -- pieces -----------------------------------------------------------------------------------------


def test_merge_diff_removes_keys_replaces_lists_and_omits_unchanged_parts() -> None:
    current = {"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2], "gone": True}
    desired = {"a": 1, "b": {"x": 1, "y": 3}, "c": [2]}

    assert merge_diff(current, desired) == {"gone": None, "b": {"y": 3}, "c": [2]}
    assert apply_merge_patch(current, merge_diff(current, desired)) == desired


def test_recent_events_keep_only_the_service_and_its_children_newest_last() -> None:
    def event(name: str, at: str) -> dict[str, Any]:
        return {"involvedObject": {"name": name}, "lastTimestamp": at}

    events = [event("mnist-predictor-00002-x", "2026-01-02"), event("other", "2026-01-03"),
              event("mnist", "2026-01-01"), event("mnistic", "2026-01-04")]

    assert [e["involvedObject"]["name"] for e in recent_events(events, "mnist")] == ["mnist", "mnist-predictor-00002-x"]


def test_the_kubernetes_adapter_turns_client_exceptions_into_api_errors() -> None:
    from kubernetes.client.exceptions import ApiException

    class NotFoundCustomObjects:
        def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
            error = ApiException(status=404, reason="Not Found")
            error.body = json.dumps({"kind": "Status", "message": 'inferenceservices "mnist" not found'})
            raise error

    api = KubernetesInferenceServiceApi(NS, NotFoundCustomObjects(), core=None)

    with pytest.raises(ApiError) as failure:
        api.get(NAME)

    assert (failure.value.status, failure.value.message) == (404, 'inferenceservices "mnist" not found')


def test_a_client_for_another_namespace_is_refused_before_anything_happens(registry: Registry) -> None:
    cluster = FakeCluster(namespace="elsewhere")

    with pytest.raises(DeployError, match="expected the Kubernetes client for namespace 'models', got one for 'elsewhere'"):
        deploy(cluster, registry, 1)

    assert cluster.calls == []
