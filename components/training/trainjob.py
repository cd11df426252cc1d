"""The Kubeflow Trainer v2 TrainJob that runs parameter-server training, and the ClusterTrainingRuntime it
runs on: pure builders.

Topology. The runtime's JobSet has two replicated jobs: ``ps``, one Indexed Job of P pods on ordinary CPU
nodes (the parameter-server shards, ranks ``0..P-1``), and ``node``, the Trainer's own job (labelled
``trainer.kubeflow.org/trainjob-ancestor-step: trainer``, so ``trainer.numNodes`` and ``resourcesPerNode``
apply to it): N pods with one GPU each (the workers, ranks ``P..P+N-1``). The rank entry point computes
the global ranks from what the Trainer and JobSet inject (:mod:`components.training.rank`); pods reach
each other through the JobSet's headless service (``<job>-ps-0-0.<job>`` is the RPC master).

What lives where. A TrainJob can change the ``node`` job's size and resources, but for every other job
only labels, annotations, scheduling, service account, security context, volumes and container env
(``runtimePatches``, Trainer v2.2+). So the runtime fixes what no TrainJob can: P (the ``ps`` job's
parallelism; one runtime per P, :func:`runtime_name`), the ``ps`` pods' resources, the image and command
of both jobs, security contexts, the failure policy. Each TrainJob adds, through ``runtimePatches``, its
service account and workload-identity label on every pod, the GPU node selector and toleration on the
``node`` pods, the run id label, and the training arguments (``TRAIN_ARGV``) on both jobs.

Restarts. The pods' Jobs have ``backoffLimit: 0`` and a pod failure policy that fails the Job for exit
codes 1–127 (permanent: our ranks exit 1 for bad configuration or data); the JobSet then fails at once
(rule on reason ``PodFailurePolicy``). Any other failure (exit 200: a peer vanished or an RPC timed out;
137: killed; a node lost) restarts the whole JobSet, up to ``maxRestarts``, and every rank resumes from
the latest complete checkpoint in the store. The launcher caps restarts per run below that ceiling.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from components.cluster import (
    TRAINING_POD_LABELS,
    GpuProfile,
    WorkloadIdentity,
    no_sidecar_metadata,
    project_image,
    restricted_container_security,
    restricted_pod_security,
    scratch_mounts,
    scratch_volumes,
)
from components.kube import JOBSET_NAME_LABEL, REPLICATED_JOB_LABEL
from components.training.config import TrainConfig, to_argv
from components.training.pytorchjob import DEFAULT_SERVICE_ACCOUNT, job_name, label_value, whole_cpus

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
RUNTIME_KIND = "ClusterTrainingRuntime"
RUNTIME_PREFIX = "kfp-ps-classifier"
SHIPPED_NUM_PS = (1, 2, 4, 8)  # the runtimes manifests/trainer/ ships: one per parameter-server count
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
PATCH_MANAGER = "kfp-ps-classifier.io/train-step"
MASTER_PORT = 29500
PERMANENT_EXIT_CODES = list(range(1, 128))  # the Training Operator's ExitCode rule: 1–127 are not retried
RUN_ID_LABEL = "pipelines.kubeflow.org/run-id"
MAX_RESTARTS = 5  # the shipped runtimes' JobSet restarts: the ceiling of a run's backoff limit
# The contract with the rank entry point (components.training.rank): job names and the arguments variable.
PS_JOB, NODE_JOB = "ps", "node"
ARGV_VARIABLE = "TRAIN_ARGV"


@dataclass(frozen=True)
class RuntimeSettings:
    """What the cluster-wide runtime fixes for every TrainJob on it (rendered into manifests/trainer/)."""

    num_ps: int
    image: str = field(default_factory=project_image)
    ps_cpu: str = "2"
    ps_memory: str = "4Gi"
    max_restarts: int = MAX_RESTARTS
    ttl_seconds_after_finished: int = 86400


@dataclass(frozen=True)
class TrainJobSettings:
    """Where and how one run's pods run; the defaults fit the project's AKS setup."""

    namespace: str
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    worker_cpu: str = "4"
    worker_memory: str = "16Gi"
    gpu: GpuProfile = field(default_factory=GpuProfile)


def runtime_name(num_ps: int) -> str:
    """The shipped runtime for ``num_ps`` parameter-server pods; refuses a count no runtime exists for."""
    if num_ps not in SHIPPED_NUM_PS:
        raise ValueError(f"expected num_ps in {SHIPPED_NUM_PS} for the trainjob launcher (one ClusterTrainingRuntime per "
                         f"parameter-server count is shipped in manifests/trainer/), got {num_ps}")
    return f"{RUNTIME_PREFIX}-ps{num_ps}"


# --- the ClusterTrainingRuntime ------------------------------------------------------------------


def build_runtime(settings: RuntimeSettings) -> dict[str, Any]:
    """The ClusterTrainingRuntime for ``settings.num_ps`` parameter-server pods and any number of GPU nodes."""
    return {
        "apiVersion": API_VERSION,
        "kind": RUNTIME_KIND,
        "metadata": {"name": runtime_name(settings.num_ps), "labels": {**TRAINING_POD_LABELS, "trainer.kubeflow.org/framework": "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},  # torch: the Trainer injects PET_NNODES/PET_NODE_RANK into node
            "template": {"spec": {
                # Pods resolve each other by hostname before they are ready: rank 0 must be reachable at once.
                "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
                "failurePolicy": {"maxRestarts": settings.max_restarts, "rules": [
                    {"name": "permanent-exit-code", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]},
                "successPolicy": {"operator": "All"},  # the servers exit once every worker finished
                "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
                "replicatedJobs": [_ps_job(settings), _node_job(settings)],
            }},
        },
    }


def _ps_job(settings: RuntimeSettings) -> dict[str, Any]:
    resources = {"cpu": settings.ps_cpu, "memory": settings.ps_memory}
    container = _container(PS_JOB, settings.image, [{"name": "TRAIN_THREADS", "value": whole_cpus(settings.ps_cpu)}])
    container["resources"] = {"requests": dict(resources), "limits": dict(resources)}
    return _job(PS_JOB, container, size=settings.num_ps)


def _node_job(settings: RuntimeSettings) -> dict[str, Any]:
    # Size and resources come from the TrainJob's trainer.numNodes and resourcesPerNode.
    job = _job(NODE_JOB, _container(NODE_JOB, settings.image, []))
    job["template"]["metadata"] = {"labels": {ANCESTOR_LABEL: "trainer"}}
    # GPU pods start once every server pod runs: no GPU is held, and no RPC timeout (a restart) spent,
    # while a CPU node scales up for the servers.
    job["dependsOn"] = [{"name": PS_JOB, "status": "Ready"}]
    return job


def _job(name: str, container: dict[str, Any], size: int | None = None) -> dict[str, Any]:
    """A replicated job of one Indexed Job; ``size`` pods (None: the Trainer sets it from numNodes)."""
    sidecar = no_sidecar_metadata()
    pod = {
        "metadata": {"labels": {**TRAINING_POD_LABELS, **sidecar["labels"]}, "annotations": sidecar["annotations"]},
        "spec": {"restartPolicy": "Never", "securityContext": restricted_pod_security(), "containers": [container],
                 "volumes": scratch_volumes()},
    }
    failure_policy = {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": name, "operator": "In", "values": list(PERMANENT_EXIT_CODES)}}]}
    # backoffLimit 0: a failed pod fails its Job, and the JobSet restarts all of them (RPC's world size is fixed).
    spec: dict[str, Any] = {"parallelism": size, "completions": size} if size else {}
    spec.update({"completionMode": "Indexed", "backoffLimit": 0, "podFailurePolicy": failure_policy, "template": pod})
    return {"name": name, "replicas": 1, "template": {"spec": spec}}


def _container(name: str, image: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    """The rank entry point; its arguments arrive per TrainJob in ``TRAIN_ARGV``, its rank from these variables."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "components.training"],
        "env": [
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            # TensorPipe and RPC's internal Gloo group listen on the pod network, whatever the hostname resolves to.
            {"name": "TP_SOCKET_IFNAME", "value": "eth0"},
            {"name": "GLOO_SOCKET_IFNAME", "value": "eth0"},
            {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
            _label_env("JOBSET_NAME", JOBSET_NAME_LABEL),
            _label_env("REPLICATED_JOB", REPLICATED_JOB_LABEL),
            *env,
        ],
        "securityContext": restricted_container_security(),
        "volumeMounts": scratch_mounts(),
    }


def _label_env(name: str, label: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{label}']"}}}


# --- the TrainJob --------------------------------------------------------------------------------


def build_trainjob(config: TrainConfig, run_id: str, settings: TrainJobSettings, timeout_s: int | None = None) -> dict[str, Any]:
    """The TrainJob for ``config``: ``num_ps`` CPU server pods and ``num_workers`` GPU nodes on the shipped runtime."""
    config.validate()
    labels = {"app.kubernetes.io/name": "ps-training", **TRAINING_POD_LABELS, RUN_ID_LABEL: label_value(run_id)}
    resources = {"cpu": settings.worker_cpu, "memory": settings.worker_memory}
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": RUNTIME_KIND, "name": runtime_name(config.num_ps)},
        "trainer": {
            "numNodes": config.num_workers,
            "resourcesPerNode": {"requests": dict(resources), "limits": {**resources, **settings.gpu.limits(1)}},
            "env": [*_argv_env(config), {"name": "TRAIN_THREADS", "value": whole_cpus(settings.worker_cpu)}],
        },
        "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [_patch(PS_JOB, settings, labels, gpu=False, env=_argv_env(config)),
                               _patch(NODE_JOB, settings, labels, gpu=True, env=None)]}}}}],
    }
    if timeout_s:
        spec["activeDeadlineSeconds"] = int(timeout_s)  # a backstop: the launcher deletes the job at its timeout
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": job_name(run_id), "namespace": settings.namespace, "labels": labels}, "spec": spec}


def _argv_env(config: TrainConfig) -> list[dict[str, str]]:
    return [{"name": ARGV_VARIABLE, "value": shlex.join(to_argv(config))}]


def _patch(job: str, settings: TrainJobSettings, labels: dict[str, str], gpu: bool, env: list[dict[str, str]] | None) -> dict[str, Any]:
    """One replicated job's per-run part: identity, run labels, scheduling, and (ps only) the arguments."""
    identity = WorkloadIdentity(settings.service_account)
    pod_spec: dict[str, Any] = {"serviceAccountName": identity.service_account}
    if gpu:
        pod_spec.update(settings.gpu.pod_spec_fields())
    if env is not None:  # the node container gets its env through trainer.env
        pod_spec["containers"] = [{"name": job, "env": env}]
    pod_meta = {"labels": {**labels, **identity.pod_labels()}}
    return {"name": job, "template": {"metadata": {"labels": dict(labels)},
                                      "spec": {"template": {"metadata": pod_meta, "spec": pod_spec}}}}


# --- the job's own NetworkPolicy -----------------------------------------------------------------


def build_network_policy(job: dict[str, Any]) -> dict[str, Any]:
    """Only the pods of this TrainJob reach its pods, on every port (TensorPipe opens random ones), and its
    pods reach each other. The namespace's baseline policy (manifests/base/networkpolicy-training.yaml) denies
    every other ingress to TrainJob pods and allows them DNS and HTTPS only; policies add up, so this one opens
    exactly the job's own traffic. The launcher creates it before the job and makes the job its owner."""
    name = job["metadata"]["name"]
    peers = [{"podSelector": {"matchLabels": {JOBSET_NAME_LABEL: name}}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{name}-peers", "namespace": job["metadata"]["namespace"], "labels": dict(job["metadata"]["labels"])},
        "spec": {"podSelector": {"matchLabels": {JOBSET_NAME_LABEL: name}}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": peers}], "egress": [{"to": peers}]},
    }
