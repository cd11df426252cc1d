"""The Kubeflow Training Operator v1 PyTorchJob that runs parameter-server training on AKS: a pure builder.

Rank mapping. A PyTorchJob has exactly one ``Master`` replica (``RANK=0``) and ``N`` ``Worker``
replicas (``RANK=1..N``), and the operator sets ``WORLD_SIZE=1+N``, ``MASTER_ADDR`` and
``MASTER_PORT`` in every pod. That is this project's rank layout when ``num_ps=1``: the Master is the
parameter server (CPU only, on ordinary nodes) and the Workers are the trainers (one GPU each, on
the AKS GPU pool). Several parameter-server shards would need several CPU pods that are not GPU
Workers, which one ``Worker`` template cannot express, so on the cluster ``num_ps`` must be 1
(:func:`build_pytorchjob` refuses anything else); shards remain a local-launcher feature. One shard
is one flat tensor and one RPC per worker per step, so it scales with the Master's CPU and network.

Restarts: ``restartPolicy: ExitCode`` retries exit codes 128–255 (our ranks exit 200 when a peer
vanished or an RPC timed out, and a SIGKILL/OOM is 137) and fails on 1–127 (our ranks exit 1 for bad
configuration or data); ``runPolicy.backoffLimit`` caps the retries. Each restarted group resumes
from the latest complete checkpoint in the store. ``cleanPodPolicy: Running`` stops the other pods
when the job ends but keeps finished pods, so a failed replica's log can still be read;
``ttlSecondsAfterFinished`` removes the job a day later. The job name is unique per pipeline run
(:func:`job_name`), so a recurring run never collides with its previous run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from components.cluster import (
    TRAINING_POD_LABELS,
    GpuProfile,
    WorkloadIdentity,
    project_image,
    restricted_container_security,
    restricted_pod_security,
    scratch_mounts,
    scratch_volumes,
)
from components.training.config import TrainConfig, to_argv

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the operator finds the container by this name
MASTER_PORT = 23456  # the operator's default; it reads the port named pytorchjob-port
DEFAULT_SERVICE_ACCOUNT = "kfp-ps-training"
# Pods and services are named <job>-worker-<index>: DNS-1123 labels of at most 63 characters,
# leaving 52 for the job name with up to 999 workers.
MAX_NAME = 52
ISTIO_INJECT = "sidecar.istio.io/inject"


@dataclass(frozen=True)
class PyTorchJobSettings:
    """Where and how the job's pods run; the defaults fit the project's AKS setup."""

    namespace: str
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    master_cpu: str = "2"
    master_memory: str = "4Gi"
    worker_cpu: str = "4"
    worker_memory: str = "16Gi"
    gpu: GpuProfile = field(default_factory=GpuProfile)
    ttl_seconds_after_finished: int = 86400


def job_name(run_id: str, prefix: str = "train") -> str:
    """A DNS-1123 name derived from the pipeline run id: the same run, the same name; another run, another."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    if not slug:
        raise ValueError(f"expected a pipeline run id with letters or digits, got {run_id!r}")
    name = f"{prefix}-{slug}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]  # keeps truncated names of different runs apart
    return f"{prefix}-{slug[: MAX_NAME - len(prefix) - 10].rstrip('-')}-{digest}"


def build_pytorchjob(config: TrainConfig, run_id: str, settings: PyTorchJobSettings, timeout_s: int, backoff_limit: int,
                     image: str | None = None) -> dict[str, Any]:
    """The PyTorchJob manifest for ``config``: Master = parameter server on CPU, Workers = GPU trainers."""
    config.validate()
    if config.num_ps != 1:
        raise ValueError(f"expected num_ps=1 for the pytorchjob launcher (a PyTorchJob has exactly one Master, "
                         f"the parameter server), got {config.num_ps}")
    image = image or project_image()
    labels = {"app.kubernetes.io/name": "ps-training", **TRAINING_POD_LABELS, "pipelines.kubeflow.org/run-id": label_value(run_id)}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": job_name(run_id), "namespace": settings.namespace, "labels": labels},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": _replica(1, _pod(config, settings, image, labels, gpu=False)),
                "Worker": _replica(config.num_workers, _pod(config, settings, image, labels, gpu=True)),
            },
            "runPolicy": {
                "backoffLimit": backoff_limit,
                "activeDeadlineSeconds": int(timeout_s),
                "cleanPodPolicy": "Running",
                "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            },
        },
    }


def _replica(replicas: int, template: dict[str, Any]) -> dict[str, Any]:
    return {"replicas": replicas, "restartPolicy": "ExitCode", "template": template}


def _pod(config: TrainConfig, settings: PyTorchJobSettings, image: str, labels: dict[str, str], gpu: bool) -> dict[str, Any]:
    identity = WorkloadIdentity(settings.service_account)
    spec: dict[str, Any] = {
        "serviceAccountName": identity.service_account,
        "securityContext": restricted_pod_security(),
        "containers": [_container(config, settings, image, gpu)],
        "volumes": scratch_volumes(),
    }
    if gpu:
        spec.update(settings.gpu.pod_spec_fields())
    # The label is what current Istio reads; the annotation is what older Kubeflow profiles document.
    return {
        "metadata": {"labels": {**labels, **identity.pod_labels(), ISTIO_INJECT: "false"},
                     "annotations": {ISTIO_INJECT: "false"}},
        "spec": spec,
    }


def _container(config: TrainConfig, settings: PyTorchJobSettings, image: str, gpu: bool) -> dict[str, Any]:
    cpu, memory = (settings.worker_cpu, settings.worker_memory) if gpu else (settings.master_cpu, settings.master_memory)
    resources = {"cpu": cpu, "memory": memory}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "components.training", *to_argv(config)],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "TRAIN_THREADS", "value": whole_cpus(cpu)},
                # TensorPipe would otherwise pick an interface by the hostname's address.
                {"name": "TP_SOCKET_IFNAME", "value": "eth0"}],
        "resources": {"requests": dict(resources), "limits": {**resources, **(settings.gpu.limits(1) if gpu else {})}},
        "securityContext": restricted_container_security(),
        "volumeMounts": scratch_mounts(),
    }
    if not gpu:
        container["ports"] = [{"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}]
    return container


def whole_cpus(quantity: str) -> str:
    """Threads for a CPU quantity (``"4"`` → 4, ``"500m"`` → 1)."""
    if quantity.endswith("m"):
        return str(max(1, int(quantity[:-1]) // 1000))
    return str(max(1, int(float(quantity))))


def label_value(text: str) -> str:
    """A valid label value (≤ 63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)
