"""Deploy target ``kserve``: create or update the InferenceService, wait, smoke-test, promote or roll back.

The flow, for one model version:

1. Read the registry's production pointer (the compare-and-swap base) and check the version is complete.
2. Get the service. Only a 404 means "create"; any other API error fails the step with its reason.
3. Create it, or patch it: in Knative mode as a canary (``canaryTrafficPercent``) when a revision is
   already serving, in Standard mode as a rolling update. A 409 conflict re-reads and retries, a
   bounded number of times.
4. Wait for the new revision (Knative) or the new pods (Standard) to be Ready, with a timeout;
   known-fatal states (failed revision, crash-looping or unpullable containers, a failed model load) fail fast.
5. Send a smoke request to the new revision, then promote the canary to 100 % and wait for it.
6. Move the production pointer (compare-and-swap) and return a :class:`DeploymentRecord`.

Any failure in 4–5, and a cancelled step (SIGTERM from KFP, or KeyboardInterrupt), rolls back: canary
traffic back to 0 % (the previous revision keeps serving), or the previous spec restored, or — for a
service this run created — the service deleted. The pointer is left where it was, and the step fails with a
:class:`~components.errors.DeployError` that carries the service's conditions and recent events.

Everything talks to Kubernetes through :class:`InferenceServiceApi`, a five-method interface; the adapter
:class:`KubernetesInferenceServiceApi` implements it with the official client.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from components.deploy.inferenceservice import (
    DEPLOYMENT_MODE_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    DeploymentMode,
    InferenceServiceSettings,
    build_inference_service,
)
from components.errors import ConflictError, DeployError

if TYPE_CHECKING:
    from components.registry import Pointer, Registry

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"  # KServe labels every predictor pod with it
# Condition reasons after which waiting longer cannot help.
FATAL_REASONS = frozenset({"RevisionFailed", "ContainerMissing", "ProgressDeadlineExceeded"})
FATAL_MODEL_STATES = frozenset({"BlockedByFailedLoad", "InvalidSpec"})
FATAL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff", "CreateContainerConfigError"})


# -- the Kubernetes boundary ------------------------------------------------------------------------


class ApiError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status (404 not found, 409 conflict, …)."""

    def __init__(self, status: int, reason: str, message: str = ""):
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status, self.reason, self.message = status, reason, message


class InferenceServiceApi(Protocol):
    """The only calls the deploy step makes; all raise :class:`ApiError`. Objects are plain dicts."""

    namespace: str

    def get(self, name: str) -> dict[str, Any]: ...
    def create(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...  # JSON merge patch
    def delete(self, name: str) -> None: ...
    def events(self, name: str) -> list[dict[str, Any]]: ...  # recent events about the service and its pods
    def pods(self, name: str) -> list[dict[str, Any]]: ...  # the service's predictor pods


class KubernetesInferenceServiceApi:
    """:class:`InferenceServiceApi` over the official client (CustomObjectsApi + CoreV1Api)."""

    def __init__(self, namespace: str, custom: Any, core: Any):
        self.namespace, self.custom, self.core = namespace, custom, core

    @classmethod
    def from_environment(cls, namespace: str) -> KubernetesInferenceServiceApi:
        """In a pod: its service account; elsewhere: the kubeconfig."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(namespace, client.CustomObjectsApi(), client.CoreV1Api())

    def get(self, name: str) -> dict[str, Any]:
        with translated_api_errors():
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        with translated_api_errors():
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        # The client sends a dict body as application/merge-patch+json.
        with translated_api_errors():
            return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def delete(self, name: str) -> None:
        with translated_api_errors():
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def events(self, name: str) -> list[dict[str, Any]]:
        with translated_api_errors():
            found = self.core.list_namespaced_event(self.namespace)
        return recent_events([self.core.api_client.sanitize_for_serialization(e) for e in found.items], name)

    def pods(self, name: str) -> list[dict[str, Any]]:
        with translated_api_errors():
            found = self.core.list_namespaced_pod(self.namespace, label_selector=f"{ISVC_POD_LABEL}={name}")
        return [self.core.api_client.sanitize_for_serialization(p) for p in found.items]


@contextmanager
def translated_api_errors() -> Iterator[None]:
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        raise ApiError(exc.status or 0, exc.reason or "", api_message(exc.body)) from None


def api_message(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, or the body itself."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        return str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        return text


def recent_events(events: list[dict[str, Any]], name: str, limit: int = 10) -> list[dict[str, Any]]:
    """The newest ``limit`` events about ``name`` or its revisions, deployments and pods (``name-…``)."""
    about = [e for e in events if _involved(e) == name or _involved(e).startswith(f"{name}-")]
    return sorted(about, key=_event_time)[-limit:]


def _involved(event: dict[str, Any]) -> str:
    return str(event.get("involvedObject", {}).get("name", ""))


def _event_time(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("metadata", {}).get("creationTimestamp") or "")


# -- settings, results, time ------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutPolicy:
    """How patient and how careful the rollout is."""

    ready_timeout_s: float = 900.0  # GPU nodes may have to scale up and pull a large image
    promote_timeout_s: float = 300.0
    rollback_timeout_s: float = 300.0
    poll_interval_s: float = 5.0
    conflict_retries: int = 3
    # The canary share is not here: it is InferenceServiceSettings.canary_traffic_percent, the one value that
    # render and deploy both build the InferenceService from.


@dataclass(frozen=True)
class SmokeTarget:
    url: str  # the new revision's own URL when there is one (canary), else the service's
    model_name: str
    revision: str | None


Smoke = Callable[[SmokeTarget], None]


class SmokeTestError(DeployError):
    """The smoke request to the new revision failed."""


@dataclass(frozen=True)
class DeploymentRecord:
    service: str  # namespace/name
    url: str
    revision: str | None
    version: int
    previous_version: int | None
    run_id: str
    mode: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class StepCancelled(BaseException):
    """SIGTERM arrived: KFP cancels a run by terminating its pods. Like KeyboardInterrupt, not an Exception."""


@contextmanager
def cancel_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`StepCancelled` inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise StepCancelled(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class RolloutFailed(Exception):
    """The new revision did not become ready, failed, or failed its smoke request (internal)."""


@dataclass(frozen=True)
class Rollout:
    """What this run changed, and what it needs to undo it."""

    name: str
    mode: DeploymentMode
    desired: dict[str, Any]
    previous: dict[str, Any] | None  # the live object before this run; None when this run created it
    canary: bool
    baseline_revision: str | None  # the revision created before this run (Knative)
    serving_revision: str | None  # the revision that served 100 % before this run (Knative)
    changed: bool  # False: the service already ran this exact spec

    @property
    def fingerprint(self) -> str:
        return self.desired["spec"]["predictor"]["annotations"][SPEC_HASH_ANNOTATION]


# -- the step ---------------------------------------------------------------------------------------


def deploy_to_kserve(
    api: InferenceServiceApi,
    settings: InferenceServiceSettings,
    registry: Registry,
    version: int,
    run_id: str,
    smoke: Smoke,
    policy: RolloutPolicy = RolloutPolicy(),
    clock: Clock = SYSTEM_CLOCK,
    expected: Pointer | None = None,
) -> DeploymentRecord:
    """Roll ``version`` out to the InferenceService ``settings`` describe; promote it or roll back (see module doc).

    ``expected``: the production pointer the promotion must still find (the caller's compare-and-swap base,
    e.g. the champion the gate judged against); default: the pointer as read here."""
    if api.namespace != settings.namespace:
        raise DeployError(f"expected the Kubernetes client for namespace {settings.namespace!r}, got one for {api.namespace!r}")
    settings = pinned_settings(settings, registry, version, run_id)  # refuses an incomplete version before touching the cluster
    pointer = expected if expected is not None else registry.production()
    with cancel_on_sigterm():
        rollout = start_rollout(api, settings, policy)
        try:
            live, target = finish_rollout(api, rollout, settings, smoke, policy, clock)
        except (RolloutFailed, SmokeTestError, ApiError) as failure:
            evidence = describe_service(api, settings.name)  # before the rollback changes it
            note = roll_back(api, rollout, policy, clock, wait=True)
            raise DeployError(failure_report(api, settings, version, pointer, f"{failure}", note, evidence)) from None
        except (KeyboardInterrupt, StepCancelled):
            log.warning("step cancelled: rolling back %s", rollout.name)
            log.warning("rollback: %s", roll_back(api, rollout, policy, clock, wait=False))
            raise
    return record_deployment(registry, settings, version, run_id, pointer, live, target)


def pinned_settings(settings: InferenceServiceSettings, registry: Registry, version: int, run_id: str) -> InferenceServiceSettings:
    """``settings`` for this run: the predictor is pinned to the version's manifest as it is now, so it refuses
    a version changed after this step looked at it."""
    digest = registry.manifest_sha256(version)
    if settings.manifest_sha256 not in (None, digest):
        raise DeployError(f"expected {registry.name} version {version}'s manifest to have SHA-256 {settings.manifest_sha256}, "
                          f"found {digest}: it changed since the settings were made; nothing deployed")
    return replace(settings, manifest_sha256=digest, rollout_id=run_id)


def deploy_registry_version(
    registry: Registry,
    version: int,
    run_id: str,
    namespace: str,
    service_name: str,
    api: InferenceServiceApi | None = None,
    smoke: Smoke | None = None,
    policy: RolloutPolicy = RolloutPolicy(),
    clock: Clock = SYSTEM_CLOCK,
    expected: Pointer | None = None,
    **settings_fields: Any,
) -> DeploymentRecord:
    """The deploy step's one call: serve ``version`` of the registry's model, which the predictor downloads
    from the registry's own Blob URI (pinned to the version's manifest by :func:`deploy_to_kserve`).

    ``settings_fields`` are the remaining :class:`InferenceServiceSettings` fields (gpus, mode, replicas …);
    ``api`` defaults to the cluster this process runs in (or the kubeconfig), ``smoke`` to :func:`http_smoke`.
    """
    settings = InferenceServiceSettings(
        name=service_name, namespace=namespace, model_name=registry.name, model_version=version,
        model_uri=registry.version_uri(version), **settings_fields,
    )
    api = api if api is not None else KubernetesInferenceServiceApi.from_environment(namespace)
    return deploy_to_kserve(api, settings, registry, version, run_id, smoke or http_smoke, policy, clock, expected)


def start_rollout(api: InferenceServiceApi, settings: InferenceServiceSettings, policy: RolloutPolicy) -> Rollout:
    """Create or patch the service; a 409 re-reads and retries (bounded)."""
    for attempt in range(policy.conflict_retries + 1):
        current = get_or_none(api, settings.name)
        try:
            return create_service(api, settings) if current is None else update_service(api, current, settings)
        except ApiError as err:
            if err.status != 409:
                raise DeployError(f"could not {'create' if current is None else 'update'} InferenceService "
                                  f"{api.namespace}/{settings.name}: {err}") from None
            log.info("conflict writing %s (attempt %d): %s; re-reading", settings.name, attempt + 1, err.message)
    raise DeployError(f"could not write InferenceService {api.namespace}/{settings.name}: "
                      f"still conflicting after {policy.conflict_retries + 1} attempts (someone else keeps changing it)")


def get_or_none(api: InferenceServiceApi, name: str) -> dict[str, Any] | None:
    """The live service, or None on 404 — the only status that means it does not exist."""
    try:
        return api.get(name)
    except ApiError as err:
        if err.status == 404:
            return None
        raise DeployError(f"could not read InferenceService {api.namespace}/{name}: {err} "
                          f"(expected 200, or 404 for a first deployment)") from None


def create_service(api: InferenceServiceApi, settings: InferenceServiceSettings) -> Rollout:
    desired = build_inference_service(replace(settings, canary_traffic_percent=None))
    api.create(desired)
    log.info("created InferenceService %s/%s", api.namespace, settings.name)
    return Rollout(settings.name, settings.mode, desired, None, False, None, None, True)


def update_service(api: InferenceServiceApi, current: dict[str, Any], settings: InferenceServiceSettings) -> Rollout:
    """Patch the live service to ``settings``: a canary at ``settings.canary_traffic_percent`` when it has one and
    a revision already serves; otherwise a straight replace (Knative shifts all traffic once the new one is ready)."""
    mode_name = live_mode_name(current, settings, api.namespace)
    status = predictor_status(current)
    serving = status.get("latestRolledoutRevision") or status.get("latestReadyRevision")
    canary = settings.canary_traffic_percent is not None and serving is not None  # settings allow one in Knative only
    desired = build_inference_service(settings if canary else replace(settings, canary_traffic_percent=None))
    desired["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] = mode_name
    changed = not already_serving(current, desired)
    rollout = Rollout(settings.name, settings.mode, desired, current, canary and changed,
                      status.get("latestCreatedRevision"), serving, changed)
    if changed:
        api.patch(settings.name, service_patch(current, desired))
        log.info("patched %s/%s (%s)", api.namespace, settings.name,
                 f"canary at {settings.canary_traffic_percent}%" if rollout.canary else "straight replace, no canary")
    else:
        log.info("%s/%s already runs this spec: nothing to patch", api.namespace, settings.name)
    return rollout


def already_serving(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """The live service runs the desired pod spec, ready, with all traffic on its latest revision."""
    wanted = desired["spec"]["predictor"]["annotations"][SPEC_HASH_ANNOTATION]
    status = predictor_status(current)
    return (
        live_fingerprint(current) == wanted
        and current.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent") in (None, 100)
        and status.get("latestCreatedRevision") == status.get("latestReadyRevision")
        and condition_true(current, "Ready")
    )


def live_mode_name(current: dict[str, Any], settings: InferenceServiceSettings, namespace: str) -> str:
    """How the live service spells its deployment mode, when it means ``settings.mode``; DeployError otherwise.

    KServe's webhook compares the annotation with ``status.deploymentMode`` as strings, without mapping the old
    names (kserve/kserve#4798): a service created as ``Serverless`` must keep that spelling on every update."""
    meta_mode = current.get("metadata", {}).get("annotations", {}).get(DEPLOYMENT_MODE_ANNOTATION)
    found = current.get("status", {}).get("deploymentMode") or meta_mode or DeploymentMode.KNATIVE.value
    try:
        same = DeploymentMode(found) is settings.mode
    except ValueError:
        same = False  # a mode this project does not deploy (ModelMesh …)
    if not same:
        raise DeployError(f"InferenceService {namespace}/{settings.name} runs in {found} mode, expected {settings.mode.value}: "
                          f"KServe cannot switch modes in place; delete the service or deploy under another name")
    return str(found)


def service_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning ``current`` into ``desired``: the whole spec (we own it), our labels and
    annotations (others' stay), and ``resourceVersion`` so that a concurrent change answers 409."""
    meta = desired["metadata"]
    return {
        "metadata": {"resourceVersion": current["metadata"]["resourceVersion"],
                     "labels": dict(meta["labels"]), "annotations": dict(meta["annotations"])},
        "spec": merge_diff(current.get("spec", {}), desired["spec"]),
    }


def merge_diff(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch from ``current`` to ``desired`` (null removes a key; lists are replaced whole)."""
    patch: dict[str, Any] = {key: None for key in current if key not in desired}
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = merge_diff(have, want)
            if sub:
                patch[key] = sub
        elif have != want:
            patch[key] = want
    return patch


# -- waiting ----------------------------------------------------------------------------------------

Check = Callable[[dict[str, Any]], tuple[bool, str]]  # (done, what it is waiting for); raises RolloutFailed


def finish_rollout(api: InferenceServiceApi, rollout: Rollout, settings: InferenceServiceSettings, smoke: Smoke,
                   policy: RolloutPolicy, clock: Clock) -> tuple[dict[str, Any], SmokeTarget]:
    """Wait for the new revision, smoke-test it, promote a canary; return the live service and the smoke target."""
    live = wait_for(api, rollout.name, lambda obj: new_revision_ready(api, rollout, obj), policy.ready_timeout_s, policy, clock)
    target = smoke_target(live, settings.model_name, rollout.canary)
    smoke(target)
    log.info("smoke request to %s passed", target.url)
    if rollout.canary:
        patch_with_retry(api, rollout.name, lambda obj: {"spec": {"predictor": {"canaryTrafficPercent": 100}}}, policy)
        live = wait_for(api, rollout.name, lambda obj: canary_promoted(obj, target.revision), policy.promote_timeout_s, policy, clock)
        log.info("promoted revision %s to 100%% of traffic", target.revision)
    return live, target


def wait_for(api: InferenceServiceApi, name: str, check: Check, timeout_s: float, policy: RolloutPolicy,
             clock: Clock) -> dict[str, Any]:
    """Poll until ``check`` says done; :class:`RolloutFailed` after ``timeout_s`` (never waits forever)."""
    deadline = clock.monotonic() + timeout_s
    while True:
        live = api.get(name)
        done, waiting_for = check(live)
        if done:
            return live
        if clock.monotonic() >= deadline:
            raise RolloutFailed(f"timed out after {timeout_s:.0f}s waiting for {waiting_for}")
        clock.sleep(policy.poll_interval_s)


def new_revision_ready(api: InferenceServiceApi, rollout: Rollout, live: dict[str, Any]) -> tuple[bool, str]:
    if not generation_observed(live):
        return False, "the controller to observe the new generation"
    raise_if_failed(live)
    pods = api.pods(rollout.name)
    raise_if_pods_failed([p for p in pods if pod_fingerprint(p) == rollout.fingerprint])
    if not condition_true(live, "Ready"):
        return False, f"Ready (now: {condition_summary(live, 'Ready')})"
    if rollout.mode is DeploymentMode.STANDARD:
        return raw_rollout_done(pods, rollout.fingerprint)
    status = predictor_status(live)
    created, ready = status.get("latestCreatedRevision"), status.get("latestReadyRevision")
    if rollout.changed and created == rollout.baseline_revision:
        return False, f"a new revision (latest is still {created})"
    return created == ready, f"revision {created} to be ready (latest ready: {ready})"


def raw_rollout_done(pods: list[dict[str, Any]], fingerprint: str) -> tuple[bool, str]:
    """A rolling update is done when every remaining pod is new and ready (and there is at least one)."""
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    old = [p for p in live if pod_fingerprint(p) != fingerprint]
    ready_new = [p for p in live if pod_fingerprint(p) == fingerprint and pod_ready(p)]
    done = not old and len(ready_new) == len(live) and bool(live)
    return done, f"the rolling update ({len(ready_new)} new pods ready, {len(old)} old pods left)"


def canary_promoted(live: dict[str, Any], revision: str | None) -> tuple[bool, str]:
    raise_if_failed(live)
    done, waiting_for = all_traffic_on(live, revision)
    return done and condition_true(live, "Ready"), waiting_for


def all_traffic_on(live: dict[str, Any], revision: str | None) -> tuple[bool, str]:
    traffic = predictor_status(live).get("traffic", [])
    full = [t for t in traffic if t.get("percent") == 100 and t.get("revisionName") == revision]
    return bool(full), f"revision {revision} to receive 100% of traffic (now: {traffic})"


def raise_if_failed(live: dict[str, Any]) -> None:
    model = live.get("status", {}).get("modelStatus", {})
    if model.get("transitionStatus") in FATAL_MODEL_STATES:
        info = model.get("lastFailureInfo", {})
        raise RolloutFailed(f"model status {model['transitionStatus']}: {info.get('reason', '')} {info.get('message', '')}".strip())
    for cond in conditions(live):
        if cond.get("status") == "False" and cond.get("reason") in FATAL_REASONS:
            raise RolloutFailed(f"condition {cond['type']} is False ({cond['reason']}): {cond.get('message', '')}")


def raise_if_pods_failed(pods: list[dict[str, Any]]) -> None:
    for pod in pods:
        status = pod.get("status", {})
        for container in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
            waiting = container.get("state", {}).get("waiting", {})
            if waiting.get("reason") in FATAL_WAITING:
                raise RolloutFailed(f"pod {pod['metadata']['name']} container {container['name']}: "
                                    f"{waiting['reason']}: {waiting.get('message', '')}")


# -- status helpers ---------------------------------------------------------------------------------


def conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj.get("status", {}).get("conditions", []))


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions(obj))


def condition_summary(obj: dict[str, Any], kind: str) -> str:
    found = [c for c in conditions(obj) if c.get("type") == kind]
    if not found:
        return f"no {kind} condition yet"
    c = found[0]
    return f"{c.get('status')} {c.get('reason', '')} {c.get('message', '')}".strip()


def generation_observed(obj: dict[str, Any]) -> bool:
    observed, generation = obj.get("status", {}).get("observedGeneration"), obj.get("metadata", {}).get("generation")
    return observed is None or generation is None or observed >= generation


def predictor_status(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status", {}).get("components", {}).get("predictor", {}))


def live_fingerprint(obj: dict[str, Any]) -> str | None:
    return obj.get("spec", {}).get("predictor", {}).get("annotations", {}).get(SPEC_HASH_ANNOTATION)


def pod_fingerprint(pod: dict[str, Any]) -> str | None:
    return pod.get("metadata", {}).get("annotations", {}).get(SPEC_HASH_ANNOTATION)


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions", []))


def service_url(live: dict[str, Any]) -> str:
    """The URL clients use (the external one when the service has one)."""
    status = live.get("status", {})
    return str(status.get("url") or status.get("address", {}).get("url") or "")


def internal_url(live: dict[str, Any]) -> str:
    """The cluster-local URL, which the deploy step (a pod in the cluster) can always reach."""
    status = live.get("status", {})
    return str(status.get("address", {}).get("url") or status.get("url") or "")


def smoke_target(live: dict[str, Any], model_name: str, canary: bool) -> SmokeTarget:
    """The new revision's own URL (tag ``latest``) for a canary; the service's URL otherwise."""
    status = predictor_status(live)
    revision = status.get("latestReadyRevision")
    tagged = [t for t in status.get("traffic", []) if t.get("revisionName") == revision and t.get("url")]
    url = tagged[0]["url"] if canary and tagged else internal_url(live)
    return SmokeTarget(url=url, model_name=model_name, revision=revision)


def patch_with_retry(api: InferenceServiceApi, name: str, make_patch: Callable[[dict[str, Any]], dict[str, Any]],
                     policy: RolloutPolicy) -> dict[str, Any]:
    """Re-read, patch with the read ``resourceVersion``, retry on 409 (bounded)."""
    for _ in range(policy.conflict_retries + 1):
        current = api.get(name)
        patch = make_patch(current)
        patch.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            return api.patch(name, patch)
        except ApiError as err:
            if err.status != 409:
                raise
    raise RolloutFailed(f"patch of {name} still conflicting after {policy.conflict_retries + 1} attempts")


# -- rollback, report, promotion --------------------------------------------------------------------


def roll_back(api: InferenceServiceApi, rollout: Rollout, policy: RolloutPolicy, clock: Clock, wait: bool) -> str:
    """Undo what this run changed; return one sentence saying what happened (never raises an API error)."""
    if rollout.previous is not None and not rollout.changed:
        return "nothing to roll back (this spec was already serving before the run)"
    try:
        done = apply_rollback(api, rollout, policy)
    except (ApiError, RolloutFailed) as err:
        return f"ROLLBACK FAILED, repair the service by hand: {err}"
    if not wait or rollout.previous is None:
        return done
    try:
        wait_for(api, rollout.name, rollback_check(api, rollout), policy.rollback_timeout_s, policy, clock)
    except (ApiError, RolloutFailed) as err:
        return f"{done}, but could not verify it: {err}"
    return f"{done} (verified)"


def apply_rollback(api: InferenceServiceApi, rollout: Rollout, policy: RolloutPolicy) -> str:
    if rollout.previous is None:
        api.delete(rollout.name)
        return "deleted the InferenceService this run created (it never served)"
    if rollout.canary:
        patch_with_retry(api, rollout.name, lambda obj: {"spec": {"predictor": {"canaryTrafficPercent": 0}}}, policy)
        return f"canary traffic set to 0%: revision {rollout.serving_revision} serves all requests"
    previous_spec = rollout.previous.get("spec", {})
    patch_with_retry(api, rollout.name, lambda obj: {"spec": merge_diff(obj.get("spec", {}), previous_spec)}, policy)
    return "restored the previous spec"


def rollback_check(api: InferenceServiceApi, rollout: Rollout) -> Check:
    """Done when the previous revision has all traffic (canary) or the previous spec is ready again."""
    if rollout.canary:
        return lambda obj: all_traffic_on(obj, rollout.serving_revision)
    previous = live_fingerprint(rollout.previous or {})
    if rollout.mode is DeploymentMode.STANDARD and previous:
        return lambda obj: raw_rollout_done(api.pods(rollout.name), previous) if condition_true(obj, "Ready") else (False, "Ready")
    return lambda obj: (generation_observed(obj) and condition_true(obj, "Ready"), "Ready with the previous spec")


def failure_report(api: InferenceServiceApi, settings: InferenceServiceSettings, version: int, pointer: Pointer,
                   reason: str, rollback: str, evidence: list[str]) -> str:
    lines = [
        f"deploy of model {settings.model_name!r} version {version} to InferenceService "
        f"{api.namespace}/{settings.name} failed: {reason}",
        f"rollback: {rollback}",
        f"production pointer unchanged (version {pointer.version})",
        *evidence,
    ]
    return "\n".join(lines)


def describe_service(api: InferenceServiceApi, name: str) -> list[str]:
    """The service's conditions and recent events, as report lines."""
    return ["conditions at failure:", *indented(describe_conditions(api, name)),
            "recent events:", *indented(describe_events(api, name))]


def indented(lines: list[str]) -> list[str]:
    return [f"  {line}" for line in lines] or ["  (none)"]


def describe_conditions(api: InferenceServiceApi, name: str) -> list[str]:
    try:
        live = api.get(name)
    except ApiError as err:
        return [f"(could not read the service: {err})"]
    return [f"{c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}".rstrip(": ") for c in conditions(live)]


def describe_events(api: InferenceServiceApi, name: str) -> list[str]:
    try:
        events = api.events(name)
    except ApiError as err:
        return [f"(could not read events: {err})"]
    return [f"{e.get('type', '')} {e.get('reason', '')} {e.get('involvedObject', {}).get('kind', '')}/"
            f"{_involved(e)}: {e.get('message', '')}" for e in events]


def record_deployment(registry: Registry, settings: InferenceServiceSettings, version: int, run_id: str,
                      pointer: Pointer, live: dict[str, Any], target: SmokeTarget) -> DeploymentRecord:
    """Move the production pointer: compare-and-swap on ``pointer`` (the base read before the rollout), and only
    while the version's manifest is still the one the predictor was pinned to."""
    record = DeploymentRecord(
        service=f"{settings.namespace}/{settings.name}", url=service_url(live) or target.url, revision=target.revision,
        version=version, previous_version=pointer.version, run_id=run_id, mode=settings.mode.value,
    )
    try:
        registry.promote(version, actor=f"kfp-run:{run_id}", expected=pointer, manifest_sha256=settings.manifest_sha256,
                         reason=f"deployed to kserve {record.service} revision {record.revision} at {record.url}")
    except ConflictError as err:
        # Another run moved the pointer, or the manifest changed, while this one rolled out; rolling back now
        # could undo another run's deploy, so the step fails and says what to do.
        raise DeployError(f"version {version} is live on {record.service}, but it was not promoted: {err}; production "
                          f"is version {registry.production().version}. Re-run the deploy for the version that should serve.") from None
    log.info("production pointer: version %s -> %s", pointer.version, version)
    return record


# -- the default smoke request ----------------------------------------------------------------------


def http_smoke(target: SmokeTarget, timeout_s: float = 10.0) -> None:
    """GET the model-level readiness path on the target; :class:`SmokeTestError` unless it answers 200."""
    url = f"{target.url.rstrip('/')}/v2/models/{target.model_name}/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise SmokeTestError(f"smoke request GET {url} failed: {err}") from None
    if status != 200:
        raise SmokeTestError(f"smoke request GET {url}: expected 200, got {status}")
