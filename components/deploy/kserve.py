"""Deploy target ``kserve``: roll a registry version out to its InferenceService, then promote it — or roll back.

The flow, for one model version:

1. Pin the version: read its manifest's digest (an incomplete version is refused before the cluster is
   touched); the predictor downloads ``URI#manifest-sha256=DIGEST`` itself and refuses any other manifest.
2. Take the production pointer the promotion must still find (the caller's: the champion the gate judged).
3. Roll out (:mod:`components.deploy.rollout`): create or patch, wait, smoke-test, promote a canary.
4. Move the production pointer (compare-and-swap on 2, requiring the digest of 1) and return a
   :class:`DeploymentRecord`.

Any failure in 3, and a cancelled step (SIGTERM from KFP, or KeyboardInterrupt), rolls back. The pointer is
left where it was, and the step fails with a :class:`~components.errors.DeployError` that carries the
service's conditions and recent events.

Kubernetes is reached through :class:`~components.deploy.kserve_api.InferenceServiceApi` only; its adapter
:class:`~components.deploy.kserve_api.KubernetesInferenceServiceApi` sits on :mod:`components.kube`.
"""

from __future__ import annotations

import logging
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from components.deploy.inferenceservice import InferenceServiceSettings
from components.deploy.isvc_status import conditions, service_url
from components.deploy.kserve_api import InferenceServiceApi, KubernetesInferenceServiceApi, involved_name
from components.deploy.rollout import (
    DEFAULT_POLICY,
    RolloutFailed,
    RolloutPolicy,
    Smoke,
    SmokeTarget,
    SmokeTestError,
    finish_rollout,
    roll_back,
    start_rollout,
)
from components.errors import ConflictError, DeployError
from components.kube import SYSTEM_CLOCK, ApiError, Clock

if TYPE_CHECKING:
    from components.registry import Pointer, Registry

log = logging.getLogger(__name__)


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


def deploy_to_kserve(
    api: InferenceServiceApi,
    settings: InferenceServiceSettings,
    registry: Registry,
    version: int,
    run_id: str,
    smoke: Smoke,
    policy: RolloutPolicy = DEFAULT_POLICY,
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
    policy: RolloutPolicy = DEFAULT_POLICY,
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
            f"{involved_name(e)}: {e.get('message', '')}" for e in events]


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
