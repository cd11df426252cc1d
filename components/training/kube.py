"""The little of the Kubernetes API the PyTorchJob launcher needs, behind a small interface.

:class:`JobClient` is what the launcher's state machine talks to; :class:`KubernetesJobClient` is the
thin adapter over the official client's ``CustomObjectsApi`` and ``CoreV1Api``. The conversions from
API objects (:func:`job_status`, :func:`pod_info`, :func:`iter_lines`) are pure functions on plain
dicts and bytes, so they are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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

    @property
    def started(self) -> bool:
        return self.phase in ("Running", *TERMINAL)


class JobClient(Protocol):
    def create_job(self, manifest: dict[str, Any]) -> None:
        """Create the job; raise :class:`JobExistsError` if the name is taken."""

    def get_status(self, name: str) -> JobStatus: ...

    def list_pods(self, name: str) -> list[PodInfo]: ...

    def stream_logs(self, pod: str) -> Iterator[str]:
        """The pod's log lines from the start, following it until its container stops."""

    def delete_job(self, name: str) -> None:
        """Delete the job and its pods; no error if it is gone already."""


def job_status(job: dict[str, Any]) -> JobStatus:
    """The phase of a PyTorchJob object: the type of its last condition whose status is True."""
    conditions = [c for c in job.get("status", {}).get("conditions") or [] if c.get("status") == "True"]
    if not conditions:
        return JobStatus("Pending")
    last = conditions[-1]
    return JobStatus(last.get("type", "Unknown"), last.get("message", ""))


def pod_info(pod: dict[str, Any]) -> PodInfo:
    """A pod (as the API serializes it) reduced to what the launcher needs."""
    meta, status = pod["metadata"], pod.get("status", {})
    labels = meta.get("labels", {})
    replica = f"{labels.get(REPLICA_TYPE_LABEL, '?')}-{labels.get(REPLICA_INDEX_LABEL, '?')}"
    state = next((c.get("state", {}) for c in status.get("containerStatuses") or [] if c.get("name") == CONTAINER), {})
    terminated, waiting = state.get("terminated") or {}, state.get("waiting") or {}
    # Why it is not running yet: the container's waiting reason (ImagePullBackOff, …) or the scheduler's (Unschedulable).
    unscheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled" and c.get("status") == "False"), {})
    return PodInfo(meta["name"], meta.get("uid", ""), replica.lower(), status.get("phase", "Unknown"),
                   terminated.get("exitCode"), terminated.get("finishedAt"), waiting.get("reason") or unscheduled.get("reason", ""))


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
        raise TrainingError(f"expected a namespace for the PyTorchJob: none given and {NAMESPACE_FILE} does not exist (not in a pod)")
    return NAMESPACE_FILE.read_text().strip()


class KubernetesJobClient:
    """:class:`JobClient` over the official Kubernetes client (in-cluster config, else kubeconfig)."""

    def __init__(self, namespace: str):
        from kubernetes import client, config  # imported lazily: only the cluster launcher needs it

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.namespace = namespace
        self.custom, self.core, self.api = client.CustomObjectsApi(), client.CoreV1Api(), client.ApiClient()
        self._api_exception = client.ApiException

    def create_job(self, manifest: dict[str, Any]) -> None:
        try:
            # Strict: the API server rejects unknown fields instead of silently dropping them.
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, manifest, field_validation="Strict")
        except self._api_exception as error:
            if error.status == 409:
                raise JobExistsError(f"a PyTorchJob named {manifest['metadata']['name']!r} exists already in {self.namespace}") from None
            raise

    def get_status(self, name: str) -> JobStatus:
        return job_status(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name))

    def list_pods(self, name: str) -> list[PodInfo]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{JOB_NAME_LABEL}={name}")
        return [pod_info(self.api.sanitize_for_serialization(p)) for p in pods.items]

    def stream_logs(self, pod: str) -> Iterator[str]:
        response = self.core.read_namespaced_pod_log(pod, self.namespace, container=CONTAINER, follow=True, _preload_content=False)
        try:
            yield from iter_lines(response.stream(amt=65536, decode_content=True))
        finally:
            response.release_conn()

    def delete_job(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Foreground")
        except self._api_exception as error:
            if error.status != 404:
                raise
