"""The deploy step's Kubernetes boundary: the InferenceService API it uses, and its adapter.

:class:`InferenceServiceApi` is the six-call interface the rollout (:mod:`components.deploy.rollout`) talks
to; every call raises :class:`~components.kube.ApiError`. :class:`KubernetesInferenceServiceApi` implements it
with the official client's ``CustomObjectsApi`` and ``CoreV1Api``, on the project's one Kubernetes layer
(:mod:`components.kube`: the client from in-cluster config or the kubeconfig, one error translation).
Tests put a fake in its place.
"""

from __future__ import annotations

from typing import Any, Protocol

from components.kube import load_api_client, translated_api_errors

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"  # KServe labels every predictor pod with it


class InferenceServiceApi(Protocol):
    """The only calls the deploy step makes; all raise :class:`~components.kube.ApiError`. Objects are plain dicts."""

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
    def from_environment(cls, namespace: str, api_client: Any = None) -> KubernetesInferenceServiceApi:
        """In a pod: its service account; elsewhere: the kubeconfig (``api_client``: an explicit one, for tests)."""
        from kubernetes import client

        api_client = load_api_client(api_client)
        return cls(namespace, client.CustomObjectsApi(api_client), client.CoreV1Api(api_client))

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


def recent_events(events: list[dict[str, Any]], name: str, limit: int = 10) -> list[dict[str, Any]]:
    """The newest ``limit`` events about ``name`` or its revisions, deployments and pods (``name-…``)."""
    about = [e for e in events if involved_name(e) == name or involved_name(e).startswith(f"{name}-")]
    return sorted(about, key=_event_time)[-limit:]


def involved_name(event: dict[str, Any]) -> str:
    return str(event.get("involvedObject", {}).get("name", ""))


def _event_time(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("metadata", {}).get("creationTimestamp") or "")
