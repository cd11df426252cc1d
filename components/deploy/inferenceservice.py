"""The KServe InferenceService for one model version: a pure function of typed settings.

How the model gets into the container: the predictor is a *custom container* (the project image running
``python -m serving``) that downloads its registry version itself, from the version's Azure Blob URI pinned
to its manifest (``URI#manifest-sha256=DIGEST``), with ``DefaultAzureCredential``, and verifies the manifest
digest and every file's SHA-256 before it reports ready. No ``STORAGE_URI``, so KServe injects no storage
initializer: the Azure workload-identity webhook mutates only the containers present when it runs, so an init
container injected after it would download anonymously (and fail) on AKS without keys. The main container
does get the identity: the pod carries the ``azure.workload.identity/use`` label and runs as the serving
service account, so the webhook injects ``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID`` and
``AZURE_FEDERATED_TOKEN_FILE``, which ``DefaultAzureCredential`` reads.

Compatibility: the Kubeflow platform 26.03 ships KServe 0.18, the newest is 0.21; an API server prunes fields
its CRD does not know. The manifest validates against the 0.18 and the newest CRD (tests), and the builder
uses only the long-standing fields listed in :data:`PREDICTOR_FIELDS` (no ``storageUris``, ``autoScaling``,
``scaleMetricType``, ``deploymentStrategy`` or ``spec.canary``). The deployment mode is annotated explicitly
(``Standard`` or ``Knative``; the shipped default is Knative), by today's names.

Security context: everything is set on the container, not the pod, because Knative (Knative mode)
rejects pod-level ``securityContext`` fields unless its ``kubernetes.podspec-securitycontext`` flag is on.
The read-only root filesystem gets a writable emptyDir at ``/tmp`` (Knative: ``kubernetes.podspec-volumes-emptydir``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from components.cluster import GpuProfile, WorkloadIdentity, pinned_image, project_image
from components.modelfile import SHA256_HEX
from components.monitoring.collection import CollectionOptions
from components.registry import pinned_uri

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
CONTAINER_NAME = "kserve-container"  # the predictor container's name in KServe's conventions
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
SPEC_HASH_ANNOTATION = "kfp-ps-classifier/spec-hash"
MODEL_VERSION_ANNOTATION = "kfp-ps-classifier/model-version"
ROLLOUT_ANNOTATION = "kfp-ps-classifier/rollout-id"  # a new value forces a new revision / rolling update
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "kfp-ps-classifier"
RUN_AS_USER = 1000  # the image's non-root user (see manifests/docker/Dockerfile)

# Long-standing predictor fields every supported controller (0.18 and newer) knows; nothing else is emitted.
PREDICTOR_FIELDS = frozenset({
    "containers", "volumes", "serviceAccountName", "nodeSelector", "tolerations", "labels", "annotations",
    "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "canaryTrafficPercent",
})
BLOB_URI_PREFIX = "https://"  # the predictor reads Azure Blob (https://ACCOUNT.blob.core.windows.net/…) itself
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# The model name goes into URL paths (/v2/models/NAME/ready); the registry's names already fit this.
MODEL_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Knative names revisions NAME-predictor-00001, and a revision name must fit a 63-character DNS label.
MAX_NAME_LENGTH = 63 - len("-predictor-00001")
LOAD_GRACE_S = 120  # download from Blob, hash checks and load of a version, before liveness counts failures


class DeploymentMode(StrEnum):
    """KServe's deployment modes by today's names; the older names are accepted as input and mapped."""

    KNATIVE = "Knative"  # was Serverless: revisions, canary traffic split, scale to zero
    STANDARD = "Standard"  # was RawDeployment: plain Deployment + HPA, rolling updates

    @classmethod
    def _missing_(cls, value: object) -> DeploymentMode:
        # Pipeline parameters, the CLI and old live services still say Serverless / RawDeployment.
        if value in LEGACY_MODE_NAMES:
            return cls(LEGACY_MODE_NAMES[value])
        raise ValueError(f"expected deployment_mode 'Standard' or 'Knative' (or their old names 'RawDeployment', "
                         f"'Serverless'), got {value!r}")


LEGACY_MODE_NAMES = {"Serverless": "Knative", "RawDeployment": "Standard"}
SCALE_METRICS = {
    DeploymentMode.KNATIVE: ("concurrency", "rps", "cpu", "memory"),
    DeploymentMode.STANDARD: ("cpu", "memory"),  # the HPA scales on resource metrics only
}


@dataclass(frozen=True)
class InferenceServiceSettings:
    """Everything the InferenceService depends on; build one per deployment."""

    name: str
    namespace: str
    model_uri: str  # the registry version's Blob URI (Registry.version_uri)
    model_name: str
    manifest_sha256: str | None = None  # the deploy step always pins; examples and `render` have no registry to ask
    image: str = field(default_factory=project_image)
    service_account: str = "kfp-ps-serving"
    # Requests = limits. The deploy step and `render` set these three from the version's profile (or an
    # operator's override) through components.deploy.sizing; these defaults are what a version without one gets.
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = 1
    gpu_profile: GpuProfile = field(default_factory=GpuProfile)
    min_replicas: int = 1
    max_replicas: int = 3
    scale_metric: str = "concurrency"
    scale_target: int = 8
    mode: DeploymentMode = DeploymentMode.KNATIVE
    canary_traffic_percent: int | None = None
    http_port: int = 8080
    model_version: int | None = None
    rollout_id: str = ""  # the deploying run's id; set by the deploy step so every rollout starts new pods
    collection: CollectionOptions = field(default_factory=CollectionOptions)  # inference data collection (off by default)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", DeploymentMode(self.mode))
        pinned_image(self.image)  # ValueError for an unpinned image, whoever passed it
        problems = settings_problems(self)
        if problems:
            raise ValueError("invalid InferenceService settings: " + "; ".join(problems))


def settings_problems(s: InferenceServiceSettings) -> list[str]:
    """What is wrong with ``s``, each as 'expected …, got …'; empty when it is valid."""
    problems = []
    if not NAME_PATTERN.match(s.name) or len(s.name) > MAX_NAME_LENGTH:
        problems.append(f"expected a service name of lowercase letters, digits and '-', starting with a letter, "
                        f"at most {MAX_NAME_LENGTH} characters, got {s.name!r}")
    if not MODEL_NAME_PATTERN.match(s.model_name):
        problems.append(f"expected a model name of lowercase letters, digits and '-' , got {s.model_name!r}")
    if not s.model_uri.startswith(BLOB_URI_PREFIX) or "#" in s.model_uri:
        problems.append(f"expected the model version's Azure Blob URI (https://ACCOUNT.blob.core.windows.net/CONTAINER/…, "
                        f"no fragment), got {s.model_uri!r}: push the model to Blob first")
    if s.collection.enabled and not s.collection.uri.startswith(BLOB_URI_PREFIX):
        problems.append(f"expected collect_uri to be an Azure Blob URI the predictor's identity may write to "
                        f"(https://ACCOUNT.blob.core.windows.net/CONTAINER/…), got {s.collection.uri!r}")
    if s.manifest_sha256 is not None and not SHA256_HEX.fullmatch(s.manifest_sha256):
        problems.append(f"expected a manifest SHA-256 of 64 lowercase hex digits, got {s.manifest_sha256!r}")
    if s.gpus < 0 or not 0 <= s.min_replicas <= s.max_replicas or s.max_replicas < 1:
        problems.append(f"expected gpus >= 0 and 0 <= min_replicas <= max_replicas >= 1, "
                        f"got gpus={s.gpus}, min_replicas={s.min_replicas}, max_replicas={s.max_replicas}")
    if s.mode is DeploymentMode.STANDARD and s.min_replicas < 1:
        problems.append(f"expected min_replicas >= 1 in Standard mode (no scale to zero), got {s.min_replicas}")
    if s.scale_metric not in SCALE_METRICS[s.mode]:
        problems.append(f"expected scale_metric in {SCALE_METRICS[s.mode]} for {s.mode.value}, got {s.scale_metric!r}")
    if s.canary_traffic_percent is not None and (s.mode is DeploymentMode.STANDARD or not 0 <= s.canary_traffic_percent <= 100):
        problems.append(f"expected canary_traffic_percent between 0 and 100 in Knative mode only, "
                        f"got {s.canary_traffic_percent} in {s.mode.value}")
    return problems


def build_inference_service(s: InferenceServiceSettings) -> dict[str, Any]:
    """The InferenceService manifest for ``s`` (a plain dict, ready for YAML or the Kubernetes API)."""
    predictor = predictor_spec(s)
    predictor["annotations"] = {**predictor["annotations"], SPEC_HASH_ANNOTATION: spec_fingerprint(predictor)}
    if s.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = s.canary_traffic_percent
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": s.name,
            "namespace": s.namespace,
            "labels": {COMPONENT_LABEL: "serving", PART_OF_LABEL: PART_OF},
            "annotations": service_annotations(s),
        },
        "spec": {"predictor": predictor},
    }


def service_annotations(s: InferenceServiceSettings) -> dict[str, str]:
    annotations = {DEPLOYMENT_MODE_ANNOTATION: s.mode.value}
    if s.mode is DeploymentMode.KNATIVE:
        # Gives the newest revision its own URL (tag "latest") so the smoke request reaches the canary.
        annotations[TAG_ROUTING_ANNOTATION] = "true"
    return annotations


def predictor_spec(s: InferenceServiceSettings) -> dict[str, Any]:
    identity = WorkloadIdentity(s.service_account)
    pod_labels = {**identity.pod_labels(), COMPONENT_LABEL: "serving", PART_OF_LABEL: PART_OF}
    annotations = {} if s.model_version is None else {MODEL_VERSION_ANNOTATION: str(s.model_version)}
    if s.rollout_id:
        annotations[ROLLOUT_ANNOTATION] = s.rollout_id
    spec: dict[str, Any] = {
        "serviceAccountName": identity.service_account,
        "labels": pod_labels,
        "annotations": annotations,
        "minReplicas": s.min_replicas,
        "maxReplicas": s.max_replicas,
        "scaleMetric": s.scale_metric,
        "scaleTarget": s.scale_target,
        "containers": [predictor_container(s)],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    if s.gpus > 0:
        spec.update(s.gpu_profile.pod_spec_fields())
    return spec


def predictor_model_uri(s: InferenceServiceSettings) -> str:
    """What the predictor downloads: the version's Blob URI, pinned to its manifest when the digest is known."""
    return s.model_uri if s.manifest_sha256 is None else pinned_uri(s.model_uri, s.manifest_sha256)


def predictor_container(s: InferenceServiceSettings) -> dict[str, Any]:
    port = s.http_port
    return {
        "name": CONTAINER_NAME,
        "image": s.image,
        "command": ["python", "-m", "serving"],
        # The server listens on loopback unless told otherwise (right for `make run`); in a pod the kubelet's
        # probes and the KServe router reach it on the pod IP, so it listens on every interface there.
        "args": ["--model-uri", predictor_model_uri(s), "--model-name", s.model_name, "--http-port", str(port),
                 "--listen-address", "0.0.0.0", *s.collection.predictor_args()],
        # No STORAGE_URI: it would make KServe inject its storage initializer, which lacks the workload identity.
        "env": [{"name": "HOME", "value": "/tmp"}],  # the root filesystem is read-only
        "ports": [{"name": "http1", "containerPort": port, "protocol": "TCP"}],
        "resources": container_resources(s),
        "readinessProbe": http_probe(f"/v2/models/{s.model_name}/ready", port, period=10, failures=3),
        # The server answers only after the download, the hash checks and the load: liveness waits for that
        # (a startupProbe would be the precise tool, but Knative accepts one only from 1.15 on).
        "livenessProbe": http_probe("/v2/health/live", port, period=20, failures=3, initial_delay=LOAD_GRACE_S),
        "securityContext": restricted_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def container_resources(s: InferenceServiceSettings) -> dict[str, dict[str, str]]:
    gpu = s.gpu_profile.limits(s.gpus)
    return {
        "requests": {"cpu": s.cpu, "memory": s.memory, **gpu},
        "limits": {"cpu": s.cpu, "memory": s.memory, **gpu},
    }


def http_probe(path: str, port: int, period: int, failures: int, initial_delay: int = 5) -> dict[str, Any]:
    # The model-level path: the server-level health stays 200 even after a model is unloaded.
    return {
        "httpGet": {"path": path, "port": port},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def restricted_security_context() -> dict[str, Any]:
    """The Pod Security Standards 'restricted' profile, container-level (see the module docstring)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def spec_fingerprint(predictor: dict[str, Any]) -> str:
    """A short hash of the pod-shaping predictor fields; pods carry it, so a rollout can tell new pods from old."""
    shaping = {k: v for k, v in predictor.items() if k not in ("annotations", "canaryTrafficPercent")}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
