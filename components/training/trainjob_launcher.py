"""The ``trainjob`` launcher (the cluster default): run training as a Kubeflow Trainer v2 TrainJob from inside
the KFP step.

It keeps every guarantee of the PyTorchJob launcher, through the same watch
(:func:`components.training.pytorchjob_launcher.launch_job`) and the same Kubernetes layer
(:mod:`components.kube`, here with :data:`~components.kube.TRAINJOB`): the job name is
unique per pipeline run and a taken name (HTTP 409) is an error, never a reuse; every pod's log (``ps-0``,
``node-1``, …; a pod recreated by a restart is followed again) is streamed into the step's output; a failed
job fails the step naming the pod that failed first, its exit code and its last lines; the timeout, a
cancelled step (SIGTERM) or a broken watch delete the job, and its pods with it. Each job gets its own
NetworkPolicy (created before the job, owned by it, so deleting the job deletes it): only the job's pods
reach its pods.

Restarts: retryable failures restart the whole JobSet (the runtime's ``failurePolicy``, up to its
``maxRestarts`` ceiling), and every rank resumes from the latest checkpoint in the store. The run's
``backoff_limit`` caps them below that ceiling: the launcher deletes and fails a job whose pods show more
restarts (JobSet's ``restart-attempt`` label).

Why the Kubernetes client and not the Kubeflow SDK's ``TrainerClient``: the SDK is not in the project's
locked dependencies; its ``train()`` builds TrainJobs from its own runtime and trainer types, not from a
manifest (this one needs ``runtimePatches`` per replicated job and a ``ps`` job it does not model); and one
client for every launcher and the deploy step keeps one error translation and one clock.
"""

from __future__ import annotations

from typing import TextIO

from components.errors import TrainingError
from components.kube import TRAINJOB, JobClient, KubernetesJobClient, current_namespace
from components.training.config import TrainConfig
from components.training.pytorchjob_launcher import launch_job, require_cluster_store
from components.training.trainjob import MAX_RESTARTS, TrainJobSettings, build_network_policy, build_trainjob

# The TrainJob's own deadline only matters when the launcher is gone (its pod killed without SIGTERM): it
# comes later than the launcher's timeout, so a watched job ends with the launcher's clearer error.
DEADLINE_GRACE_S = 300


def run_trainjob(config: TrainConfig, run_id: str, timeout_s: float, backoff_limit: int, settings: TrainJobSettings | None = None,
                 client: JobClient | None = None, out: TextIO | None = None, poll_s: float = 5.0) -> None:
    """Build the TrainJob for ``config`` and run it to the end in this step's namespace."""
    require_cluster_store(config, "trainjob")
    if backoff_limit > MAX_RESTARTS:
        raise TrainingError(f"expected train_backoff_limit <= {MAX_RESTARTS} for the trainjob launcher (the shipped "
                            f"ClusterTrainingRuntime's failurePolicy.maxRestarts), got {backoff_limit}")
    settings = settings or TrainJobSettings(namespace=current_namespace())
    manifest = build_trainjob(config, run_id, settings, timeout_s=int(timeout_s) + DEADLINE_GRACE_S)
    client = client or KubernetesJobClient(settings.namespace, TRAINJOB)
    launch_job(manifest, client, timeout_s, out, poll_s=poll_s, max_restarts=backoff_limit, network_policy=build_network_policy(manifest))
