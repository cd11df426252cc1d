"""Cluster settings shared by every manifest the project generates (PyTorchJob, InferenceService).

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
