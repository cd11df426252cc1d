"""The project's one Kubernetes layer: client, error translation, clock — and the job adapter of the training launchers.

Every cluster caller (the PyTorchJob and TrainJob launchers, the deploy step's InferenceService adapter in
:mod:`components.deploy.kserve_api`) gets its ``ApiClient`` from :func:`load_api_client` (in-cluster config,
else the kubeconfig; tests pass one pointed at a fake API server), reads the API server's message with
:func:`api_message`, and waits on a :class:`Clock` that tests replace.

Jobs: :class:`JobClient` is what the launchers' state machine talks to; :class:`KubernetesJobClient` is the
thin adapter over the official client's ``CustomObjectsApi`` and ``CoreV1Api``, told by a :class:`JobKind`
which resource it manages and how that kind's pods are labelled. The conversions from API objects
(:func:`job_status`, :func:`pod_info`, :func:`iter_lines`) are pure functions on plain dicts and bytes, so
they are tested without a cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from components.errors import TrainingError

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
CONTAINER = "pytorch"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
TERMINAL = ("Succeeded", "Failed")
# JobSet labels every pod of a TrainJob with these (the JobSet has the TrainJob's name).
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
RESTART_ATTEMPT_LABEL = "jobset.sigs.k8s.io/restart-attempt"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


# -- client, errors, clock: shared by every caller -----------------------------------------------------


def load_api_client(api_client: Any = None) -> Any:
    """``api_client`` when given (tests), else one for the cluster this runs in, else for the kubeconfig."""
    from kubernetes import client, config  # imported lazily: only the cluster paths need it

    if api_client is not None:
        return api_client
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class ApiError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status (404 not found, 409 conflict, …)."""

    def __init__(self, status: int, reason: str, message: str = ""):
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status, self.reason, self.message = status, reason, message


@contextmanager
def translated_api_errors() -> Iterator[None]:
    """The official client's ``ApiException`` as :class:`ApiError`, with the API server's own message."""
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        raise ApiError(exc.status or 0, exc.reason or "", api_message(exc.body) or str(exc.reason or "")) from None


def api_message(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, or the body itself."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        return str(json.loads(text).get("message") or text)
    except (ValueError, AttributeError):
        return text


class Clock(Protocol):
    """Time as the waiting code sees it; tests pass one that advances without sleeping."""

    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


# -- jobs: the training launchers' adapter ---------------------------------------------------------------


@dataclass(frozen=True)
class JobKind:
    """A job resource and how its pods are found and named."""

    kind: str
    group: str
    version: str
    plural: str
    job_label: str  # pod label whose value is the job's name
    replica_labels: tuple[str, str]  # pod labels of replica type and index: together "worker-1", "ps-0"
    containers: tuple[str, ...]  # the training containers (one per pod)
    # Condition type → launcher phase, where the kind's words differ (TrainJob says Complete).
    phases: tuple[tuple[str, str], ...] = ()


PYTORCHJOB = JobKind("PyTorchJob", GROUP, VERSION, PLURAL, JOB_NAME_LABEL, (REPLICA_TYPE_LABEL, REPLICA_INDEX_LABEL), (CONTAINER,))
TRAINJOB = JobKind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", JOBSET_NAME_LABEL,
                   (REPLICATED_JOB_LABEL, COMPLETION_INDEX_LABEL), ("ps", "node"), (("Complete", "Succeeded"),))


class JobExistsError(TrainingError):
    """A job of that name exists already (HTTP 409)."""


@dataclass(frozen=True)
class JobStatus:
    """The job's latest condition: Created, Running, Restarting, Succeeded or Failed."""

    phase: str
    message: str = ""


@dataclass(frozen=True)
class PodInfo:
    """One replica's pod: ``replica`` is e.g. ``master-0`` or ``worker-2``."""

    name: str
    uid: str
    replica: str
    phase: str
    exit_code: int | None = None
    finished_at: str | None = None
    waiting_reason: str = ""
    container: str = CONTAINER  # the training container, whose log is followed
    restart_attempt: int = 0  # how many times the job was restarted before this pod was created (JobSet)

    @property
    def started(self) -> bool:
        return self.phase in ("Running", *TERMINAL)


class JobClient(Protocol):
    def create_job(self, manifest: dict[str, Any]) -> str:
        """Create the job and return its uid; raise :class:`JobExistsError` if the name is taken."""

    def get_status(self, name: str) -> JobStatus: ...

    def list_pods(self, name: str) -> list[PodInfo]: ...

    def stream_logs(self, pod: str, container: str | None = None) -> Iterator[str]:
        """The log lines of the pod's training container from the start, following it until it stops."""

    def delete_job(self, name: str) -> None:
        """Delete the job and its pods; no error if it is gone already."""

    def create_policy(self, manifest: dict[str, Any]) -> None:
        """Create a NetworkPolicy; one of that name (an earlier attempt of the same run) is left as it is."""

    def own_policy(self, name: str, owner: dict[str, Any]) -> None:
        """Make the job the policy's owner, so that deleting the job deletes the policy (garbage collection)."""

    def delete_policy(self, name: str) -> None:
        """Delete a NetworkPolicy; no error if it is gone already."""


def job_status(job: dict[str, Any], kind: JobKind = PYTORCHJOB) -> JobStatus:
    """The phase of a job object: a terminal condition that is True, else the type of its last True condition."""
    names = dict(kind.phases)
    conditions = [c for c in job.get("status", {}).get("conditions") or [] if c.get("status") == "True"]
    # A TrainJob's conditions are a map keyed by type, not a history: Created stays True after Complete.
    terminal = [c for c in conditions if names.get(c.get("type"), c.get("type")) in TERMINAL]
    if not conditions:
        return JobStatus("Pending")
    last = (terminal or conditions)[-1]
    return JobStatus(names.get(last.get("type"), last.get("type", "Unknown")), last.get("message", ""))


def pod_info(pod: dict[str, Any], kind: JobKind = PYTORCHJOB) -> PodInfo:
    """A pod (as the API serializes it) reduced to what the launcher needs."""
    meta, status = pod["metadata"], pod.get("status", {})
    labels = meta.get("labels", {})
    replica = f"{labels.get(kind.replica_labels[0], '?')}-{labels.get(kind.replica_labels[1], '?')}"
    container = next((c for c in status.get("containerStatuses") or [] if c.get("name") in kind.containers), {})
    state = container.get("state", {})
    terminated, waiting = state.get("terminated") or {}, state.get("waiting") or {}
    # Why it is not running yet: the container's waiting reason (ImagePullBackOff, …) or the scheduler's (Unschedulable).
    unscheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled" and c.get("status") == "False"), {})
    return PodInfo(meta["name"], meta.get("uid", ""), replica.lower(), status.get("phase", "Unknown"),
                   terminated.get("exitCode"), terminated.get("finishedAt"), waiting.get("reason") or unscheduled.get("reason", ""),
                   container.get("name") or _pod_container(pod, kind), int(labels.get(RESTART_ATTEMPT_LABEL, 0)))


def _pod_container(pod: dict[str, Any], kind: JobKind) -> str:
    """The training container named in the pod's spec (before any container status exists)."""
    names = [c.get("name") for c in pod.get("spec", {}).get("containers") or []]
    return next((n for n in names if n in kind.containers), kind.containers[0])


def iter_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Split a byte stream into text lines (a line may span chunks; a last partial line is kept)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def current_namespace() -> str:
    """The namespace this pod runs in (the KFP step's profile namespace)."""
    if not NAMESPACE_FILE.is_file():
        raise TrainingError(f"expected a namespace for the training job: none given and {NAMESPACE_FILE} does not exist (not in a pod)")
    return NAMESPACE_FILE.read_text().strip()


class KubernetesJobClient:
    """:class:`JobClient` over the official Kubernetes client (in-cluster config, else kubeconfig) for one :class:`JobKind`."""

    def __init__(self, namespace: str, kind: JobKind = PYTORCHJOB, api_client: Any = None):
        """``api_client``: an explicit ``kubernetes.client.ApiClient`` (tests point one at a fake API server)."""
        from kubernetes import client  # imported lazily: only the cluster launchers need it

        api_client = load_api_client(api_client)
        self.namespace, self.kind = namespace, kind
        self.custom, self.core, self.api = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client), api_client
        self.networking = client.NetworkingV1Api(api_client)
        self._api_exception = client.ApiException

    def _resource(self) -> tuple[str, str, str, str]:
        return self.kind.group, self.kind.version, self.namespace, self.kind.plural

    def create_job(self, manifest: dict[str, Any]) -> str:
        try:
            # Strict: the API server rejects unknown fields instead of silently dropping them.
            created = self.custom.create_namespaced_custom_object(*self._resource(), manifest, field_validation="Strict")
            return created.get("metadata", {}).get("uid", "")
        except self._api_exception as error:
            if error.status == 409:
                raise JobExistsError(f"a {self.kind.kind} named {manifest['metadata']['name']!r} exists already in {self.namespace}") from None
            raise TrainingError(f"expected the API server to create {self.kind.kind} {manifest['metadata']['name']!r}, "
                                f"got HTTP {error.status}: {_api_message(error)}") from None

    def get_status(self, name: str) -> JobStatus:
        return job_status(self.custom.get_namespaced_custom_object(*self._resource(), name), self.kind)

    def list_pods(self, name: str) -> list[PodInfo]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{self.kind.job_label}={name}")
        return [pod_info(self.api.sanitize_for_serialization(p), self.kind) for p in pods.items]

    def stream_logs(self, pod: str, container: str | None = None) -> Iterator[str]:
        container = container or self.kind.containers[0]
        from urllib3.exceptions import HTTPError

        try:
            response = self.core.read_namespaced_pod_log(pod, self.namespace, container=container, follow=True, _preload_content=False)
            try:
                yield from iter_lines(response.stream(amt=65536, decode_content=True))
            finally:
                response.release_conn()
        except (self._api_exception, HTTPError, OSError) as error:
            raise TrainingError(f"expected to follow the log of pod {pod} ({container}), got {type(error).__name__}: {error}") from None

    def delete_job(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(*self._resource(), name, propagation_policy="Foreground")
        except self._api_exception as error:
            if error.status != 404:
                raise


    def create_policy(self, manifest: dict[str, Any]) -> None:
        try:
            self.networking.create_namespaced_network_policy(self.namespace, manifest)
        except self._api_exception as error:
            if error.status != 409:
                raise TrainingError(f"expected the API server to create NetworkPolicy {manifest['metadata']['name']!r}, "
                                    f"got HTTP {error.status}: {_api_message(error)}") from None

    def own_policy(self, name: str, owner: dict[str, Any]) -> None:
        try:
            self.networking.patch_namespaced_network_policy(name, self.namespace, {"metadata": {"ownerReferences": [owner]}})
        except self._api_exception as error:
            raise TrainingError(f"expected to set the owner of NetworkPolicy {name!r}, got HTTP {error.status}: {_api_message(error)}") from None

    def delete_policy(self, name: str) -> None:
        try:
            self.networking.delete_namespaced_network_policy(name, self.namespace)
        except self._api_exception as error:
            if error.status != 404:
                raise


def _api_message(error: Any) -> str:
    """The API server's own message (a Status object's ``message``), else the raw body or the reason."""
    return api_message(error.body) or str(error.reason or "")
