"""Cluster settings shared by every manifest the project generates (TrainJob, PyTorchJob, InferenceService).

One GPU scheduling profile serves both the training workers and the inference service, so a GPU pool
that one can reach the other can too. One image reference serves every KFP step and pod.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

# The project's image: every KFP component, training pod and predictor runs it. Pinned to the
# project's version; `make images` builds and pushes this tag. Override at compile/render time
# with PIPELINE_IMAGE (e.g. an ACR digest reference).
DEFAULT_IMAGE = "kfpps.azurecr.io/kfp-ps-classifier:0.1.0"

AKS_GPU_LABEL = "kubernetes.azure.com/accelerator"
WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use"


def project_image() -> str:
    """The image reference to put in manifests; refuses unpinned references."""
    return pinned_image(os.environ.get("PIPELINE_IMAGE", DEFAULT_IMAGE))


def pinned_image(image: str) -> str:
    """``image`` if it names a fixed version (a tag other than latest, or a digest), else ValueError."""
    last = image.rsplit("/", 1)[-1]
    if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
        raise ValueError(f"expected a pinned image (name:version or name@sha256:…), got {image!r}")
    return image


@dataclass(frozen=True)
class GpuProfile:
    """Where GPU pods go on AKS: the accelerator label AKS sets and the taint chosen at pool creation."""

    resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=lambda: {AKS_GPU_LABEL: "nvidia"})
    taint_key: str = "sku"
    taint_value: str = "gpu"
    taint_effect: str = "NoSchedule"

    def tolerations(self) -> list[dict[str, str]]:
        return [{"key": self.taint_key, "operator": "Equal", "value": self.taint_value, "effect": self.taint_effect}]

    def pod_spec_fields(self) -> dict[str, Any]:
        """``nodeSelector`` and ``tolerations`` for a pod spec."""
        return {"nodeSelector": dict(self.node_selector), "tolerations": self.tolerations()}

    def limits(self, count: int) -> dict[str, str]:
        return {self.resource: str(count)} if count > 0 else {}


@dataclass(frozen=True)
class WorkloadIdentity:
    """A Kubernetes service account federated with an Azure managed identity."""

    service_account: str

    def pod_labels(self) -> dict[str, str]:
        return {WORKLOAD_IDENTITY_LABEL: "true"}


# The image's user (manifests/docker/Dockerfile: USER 1000:1000). Given as a number so that the kubelet can
# check runAsNonRoot without reading the image.
IMAGE_UID = 1000
TMP_VOLUME = "tmp"
SHM_VOLUME = "dshm"


def restricted_pod_security() -> dict[str, Any]:
    """The pod-level half of the Kubernetes "restricted" Pod Security Standard."""
    return {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID, "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def restricted_container_security() -> dict[str, Any]:
    """No privilege escalation, no capabilities, a read-only root filesystem (writes go to the emptyDirs)."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def scratch_volumes() -> list[dict[str, Any]]:
    """/tmp (HOME of the image's user: caches, temporary files) and /dev/shm, where DataLoader worker processes
    pass batches (a container's own /dev/shm is 64 MiB, too small for image batches)."""
    return [{"name": TMP_VOLUME, "emptyDir": {}}, {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}}]


def scratch_mounts() -> list[dict[str, str]]:
    return [{"name": TMP_VOLUME, "mountPath": "/tmp"}, {"name": SHM_VOLUME, "mountPath": "/dev/shm"}]


# Every training pod of the project carries these; the NetworkPolicy manifests/base/networkpolicy-training.yaml
# selects them (RPC has no authentication, so only training pods may reach training pods).
TRAINING_POD_LABELS = {"app.kubernetes.io/part-of": "kfp-ps-classifier", "app.kubernetes.io/component": "training"}
ISTIO_INJECT = "sidecar.istio.io/inject"


def no_sidecar_metadata() -> dict[str, dict[str, str]]:
    """Istio off: its sidecar would intercept TensorPipe's extra ports. The label is what current Istio reads;
    the annotation is what older Kubeflow profiles document."""
    return {"labels": {ISTIO_INJECT: "false"}, "annotations": {ISTIO_INJECT: "false"}}
