"""The rollout of one InferenceService spec: create or patch, wait, smoke-test, promote a canary — or roll back.

- Get the service: only a 404 means "create"; any other API error fails with its reason.
- Create it, or patch it: in Knative mode as a canary at ``settings.canary_traffic_percent`` when a revision is
  already serving (none: a straight replace), in Standard mode as a rolling update. A 409 re-reads and
  retries, a bounded number of times.
- Wait for the new revision (Knative) or the new pods (Standard) to be Ready, with a timeout; known-fatal
  states (failed revision, crash-looping or unpullable containers, a failed model load) fail fast.
- Smoke-test the new revision, then promote the canary to 100 % and wait for it.
- :func:`roll_back` undoes what the run changed: canary traffic back to 0 % (the previous revision keeps
  serving), the previous spec restored, or a service this run created deleted.

Only :class:`~components.deploy.kserve_api.InferenceServiceApi` calls and a :class:`~components.kube.Clock`:
tests run it against a fake API with a fake clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from components.deploy.inferenceservice import (
    DEPLOYMENT_MODE_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    DeploymentMode,
    InferenceServiceSettings,
    build_inference_service,
)
from components.deploy.isvc_status import (
    condition_summary,
    condition_true,
    conditions,
    generation_observed,
    internal_url,
    live_fingerprint,
    pod_fingerprint,
    pod_ready,
    predictor_status,
)
from components.deploy.kserve_api import InferenceServiceApi
from components.errors import DeployError
from components.kube import ApiError, Clock

log = logging.getLogger(__name__)

# Condition reasons after which waiting longer cannot help.
FATAL_REASONS = frozenset({"RevisionFailed", "ContainerMissing", "ProgressDeadlineExceeded"})
FATAL_MODEL_STATES = frozenset({"BlockedByFailedLoad", "InvalidSpec"})
FATAL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff", "CreateContainerConfigError"})


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


DEFAULT_POLICY = RolloutPolicy()


@dataclass(frozen=True)
class SmokeTarget:
    url: str  # the new revision's own URL when there is one (canary), else the service's
    model_name: str
    revision: str | None


Smoke = Callable[[SmokeTarget], None]


class SmokeTestError(DeployError):
    """The smoke request to the new revision failed."""


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
