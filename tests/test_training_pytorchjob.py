"""The cluster launcher: the PyTorchJob manifest (against the real CRD schema) and the launcher's state machine.

The state machine runs against a FAKE Kubernetes API (:class:`FakeCluster`): a Training Operator
and GPU nodes are the one boundary these tests cannot run here. The fake plays back scripted job
conditions and pods, and serves each pod's log lines; everything else (creating, following logs,
naming the failing replica, deleting on timeout and on SIGTERM) is the launcher's real code. The
adapter's conversions from API objects are tested on objects shaped as the API serializes them.
"""

from __future__ import annotations

import copy
import inspect
import io
import os
import re
import signal
from collections.abc import Iterator

import jsonschema
import pytest
import yaml

from components.cluster import GpuProfile, project_image
from components.errors import TrainingError
from components.kube import JobExistsError, JobStatus, PodInfo, iter_lines, job_status, pod_info
from components.training.config import TrainConfig, from_argv
from components.training.pytorchjob import MAX_NAME, PyTorchJobSettings, build_pytorchjob, job_name
from components.training.pytorchjob_launcher import Cancelled, launch_pytorchjob, run_pytorchjob
from components.training.render import render_pytorchjob
from tests import k8s_schema
from tests.helpers import TickingClock
from tests.k8s_schema import SCHEMAS

PYTORCHJOB_CRD = "kubeflow.org_pytorchjobs.yaml"
DNS_1123_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RUN_ID = "4f1c2b9e-1234-4cde-9abc-0123456789ab"
BLOB = "https://acct.blob.core.windows.net/data/kfp"


def cluster_config(**overrides) -> TrainConfig:
    fields = {"num_ps": 1, "num_workers": 3, **overrides}
    return TrainConfig(store_uri=BLOB, dataset_prefix="prepared/0123abcd", output_prefix=f"runs/{RUN_ID}/model", **fields)


def manifest(**overrides) -> dict:
    return build_pytorchjob(cluster_config(**overrides), RUN_ID, PyTorchJobSettings(namespace="kubeflow-user"), timeout_s=3600, backoff_limit=4)


def strict(schema: dict) -> dict:
    """The CRD schema with unknown fields forbidden: the API server would silently prune them."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


@pytest.fixture(scope="module")
def crd_schema() -> dict:
    if not (SCHEMAS / PYTORCHJOB_CRD).is_file():
        pytest.skip(f"needs the Training Operator CRD schema {PYTORCHJOB_CRD} (from kubeflow/training-operator "
                    f"manifests/base/crds/, branch release-1.9) in ../shared/schemas/ beside this clone ({SCHEMAS}, "
                    "absent): put it there to run these checks")
    return strict(k8s_schema.crd_schema(PYTORCHJOB_CRD, "v1"))


# --- the manifest --------------------------------------------------------------------------------


def test_the_job_validates_against_the_pytorchjob_crd_with_unknown_fields_forbidden(crd_schema):
    job = manifest()
    jsonschema.validate(job, crd_schema)
    broken = copy.deepcopy(job)
    broken["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["nodeSelecter"] = {}
    with pytest.raises(jsonschema.ValidationError, match="nodeSelecter"):
        jsonschema.validate(broken, crd_schema)  # the strict schema does catch a typo


def test_the_master_is_the_parameter_server_on_cpu_and_runs_the_training_entry_point():
    master = manifest()["spec"]["pytorchReplicaSpecs"]["Master"]
    pod = master["template"]["spec"]
    container = pod["containers"][0]
    assert master["replicas"] == 1 and master["restartPolicy"] == "ExitCode"
    assert "nvidia.com/gpu" not in container["resources"]["limits"] and "nodeSelector" not in pod
    assert container["command"][:3] == ["python", "-m", "components.training"]
    assert from_argv(container["command"][3:]) == cluster_config()  # the pod gets exactly this configuration
    assert {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"} in container["ports"]


def test_workers_get_one_gpu_each_on_the_shared_aks_gpu_profile():
    worker = manifest()["spec"]["pytorchReplicaSpecs"]["Worker"]
    pod = worker["template"]["spec"]
    assert worker["replicas"] == 3 and worker["restartPolicy"] == "ExitCode"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    profile = GpuProfile()
    assert pod["nodeSelector"] == profile.node_selector and pod["tolerations"] == profile.tolerations()


def test_every_pod_has_the_pinned_image_workload_identity_and_no_istio_sidecar():
    for replica in manifest()["spec"]["pytorchReplicaSpecs"].values():
        template = replica["template"]
        assert template["spec"]["containers"][0]["image"] == project_image()
        assert template["spec"]["serviceAccountName"] == "kfp-ps-training"
        assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"


def test_run_policy_carries_the_backoff_limit_and_the_timeout():
    policy = manifest()["spec"]["runPolicy"]
    assert policy["backoffLimit"] == 4 and policy["activeDeadlineSeconds"] == 3600
    assert policy["cleanPodPolicy"] == "Running"  # stop the others, keep a failed pod's log


def test_more_than_one_parameter_server_shard_is_refused_on_the_cluster():
    with pytest.raises(ValueError, match=r"expected num_ps=1 for the pytorchjob launcher .* got 2"):
        manifest(num_ps=2)


def test_job_names_are_dns_labels_unique_per_run_and_stable_within_one():
    short, long_a, long_b = RUN_ID, "Nightly Retrain " + "x" * 80 + "-a", "Nightly Retrain " + "x" * 80 + "-b"
    names = [job_name(r) for r in (short, long_a, long_b)]
    assert names[0] == f"train-{RUN_ID}"
    assert all(DNS_1123_LABEL.match(n) and len(n) <= MAX_NAME for n in names)
    assert len(set(names)) == 3 and job_name(long_a) == names[1]
    with pytest.raises(ValueError, match="expected a pipeline run id with letters or digits"):
        job_name("///")


# --- converting API objects ----------------------------------------------------------------------


def test_the_job_phase_is_its_last_true_condition():
    job = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
                                     {"type": "Failed", "status": "True", "message": "1 Worker replica(s) failed."}]}}
    assert job_status(job) == JobStatus("Failed", "1 Worker replica(s) failed.")
    assert job_status({}) == JobStatus("Pending")


def test_a_pod_is_reduced_to_replica_phase_and_exit_code():
    pod = {"metadata": {"name": "train-x-worker-1", "uid": "u1",
                        "labels": {"training.kubeflow.org/replica-type": "worker", "training.kubeflow.org/replica-index": "1"}},
           "status": {"phase": "Failed", "containerStatuses": [
               {"name": "pytorch", "state": {"terminated": {"exitCode": 137, "finishedAt": "2026-11-21T10:00:00Z"}}}]}}
    assert pod_info(pod) == PodInfo("train-x-worker-1", "u1", "worker-1", "Failed", 137, "2026-11-21T10:00:00Z")
    pending = {"metadata": {"name": "p", "labels": {}}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}
    assert pod_info(pending).waiting_reason == "Unschedulable"


def test_log_chunks_are_split_into_lines_across_chunk_boundaries():
    assert list(iter_lines([b"epoch 1\nepo", b"ch 2\n", b"", b"tail"])) == ["epoch 1", "epoch 2", "tail"]


# --- the launcher against a fake Kubernetes API --------------------------------------------------


def pod(replica: str, phase: str, uid: str | None = None, exit_code: int | None = None, finished_at: str | None = None,
        reason: str = "") -> PodInfo:
    return PodInfo(f"{job_name(RUN_ID)}-{replica}", uid or replica, replica, phase, exit_code, finished_at, reason)


class FakeCluster:
    """Plays back one (job status, pods) snapshot per poll; serves logs by pod instance (uid)."""

    def __init__(self, script: list[tuple[JobStatus, list[PodInfo]]], logs: dict[str, list[str]] | None = None,
                 exists: bool = False, on_poll=None):
        self.script, self.logs, self.exists, self.on_poll = script, logs or {}, exists, on_poll
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.polls = 0

    def _snapshot(self) -> tuple[JobStatus, list[PodInfo]]:
        return self.script[min(self.polls, len(self.script)) - 1]

    def create_job(self, manifest: dict) -> None:
        if self.exists:
            raise JobExistsError(f"a PyTorchJob named {manifest['metadata']['name']!r} exists already in kubeflow-user")
        self.created.append(manifest)

    def get_status(self, name: str) -> JobStatus:
        self.polls += 1
        if self.on_poll:
            self.on_poll(self.polls)
        return self._snapshot()[0]

    def list_pods(self, name: str) -> list[PodInfo]:
        return self._snapshot()[1]

    def stream_logs(self, pod_name: str, container: str | None = None) -> Iterator[str]:
        uid = next(p.uid for p in self._snapshot()[1] if p.name == pod_name)
        yield from self.logs.get(uid, [])

    def delete_job(self, name: str) -> None:
        self.deleted.append(name)


RUNNING = JobStatus("Running")


def run(cluster: FakeCluster, timeout_s: float = 100.0) -> str:
    out = io.StringIO()
    launch_pytorchjob(manifest(), cluster, timeout_s, out, poll_s=0, clock=TickingClock(10))  # each poll: 10 s later
    return out.getvalue()


def test_a_successful_job_streams_every_replica_s_log_and_is_left_for_its_ttl():
    cluster = FakeCluster(
        [(JobStatus("Created"), [pod("master-0", "Pending", reason="ContainerCreating"), pod("worker-0", "Pending", reason="Unschedulable")]),
         (RUNNING, [pod("master-0", "Running"), pod("worker-0", "Running")]),
         (JobStatus("Succeeded"), [pod("master-0", "Succeeded", exit_code=0), pod("worker-0", "Succeeded", exit_code=0)])],
        logs={"master-0": ["ps0: 50000 parameters, 44 updates"], "worker-0": ["epoch 1/1  loss 0.5", "done"]})
    out = run(cluster)
    assert cluster.created[0]["metadata"]["name"] == job_name(RUN_ID)
    assert "[launcher] worker-0: Pending (Unschedulable)" in out  # a job waiting for a GPU node says so
    assert "[master-0] ps0: 50000 parameters, 44 updates" in out and "[worker-0] epoch 1/1  loss 0.5" in out
    assert f"[launcher] PyTorchJob {job_name(RUN_ID)} succeeded" in out
    assert cluster.deleted == []


def test_a_failed_job_fails_the_step_naming_the_first_failing_replica_and_its_last_lines():
    failed = [pod("master-0", "Failed", exit_code=200, finished_at="2026-11-21T10:00:05Z"),
              pod("worker-1", "Failed", exit_code=1, finished_at="2026-11-21T10:00:01Z")]
    cluster = FakeCluster([(RUNNING, [pod("master-0", "Running"), pod("worker-1", "Running")]),
                           (JobStatus("Failed", "PyTorchJob failed because 1 Worker replica(s) failed."), failed)],
                          logs={"worker-1": ["Traceback (most recent call last):", "DataError: no prepared data set at …"],
                                "master-0": ["RuntimeError: eof"]})
    with pytest.raises(TrainingError) as failure:
        run(cluster)
    assert re.match(r"(?s)PyTorchJob train-\S+ failed: PyTorchJob failed because 1 Worker replica\(s\) failed\.; "
                    r"worker-1 \(pod train-\S+-worker-1\) exited with code 1 \(permanent: bad configuration or data\); "
                    r"its last lines:\n  Traceback.*\n  DataError: no prepared data set", str(failure.value))
    assert cluster.deleted == []  # a finished job is kept for inspection (its TTL removes it)


def test_a_pod_the_operator_recreates_is_followed_again():
    cluster = FakeCluster(
        [(RUNNING, [pod("master-0", "Running"), pod("worker-0", "Running", uid="w0-a")]),
         (JobStatus("Restarting"), [pod("master-0", "Running"), pod("worker-0", "Failed", uid="w0-a", exit_code=137)]),
         (RUNNING, [pod("master-0", "Running"), pod("worker-0", "Running", uid="w0-b")]),
         (JobStatus("Succeeded"), [pod("master-0", "Succeeded", exit_code=0), pod("worker-0", "Succeeded", uid="w0-b", exit_code=0)])],
        logs={"w0-a": ["first life"], "w0-b": ["resuming from the checkpoint of step 100"]})
    out = run(cluster)
    assert "[worker-0] first life" in out and "[worker-0] resuming from the checkpoint of step 100" in out
    assert "[launcher] job: Restarting" in out


def test_a_name_taken_by_an_earlier_attempt_is_a_clear_error_not_a_reuse():
    cluster = FakeCluster([(RUNNING, [])], exists=True)
    with pytest.raises(TrainingError, match=r"exists already in kubeflow-user\. Job names are unique per pipeline run.*kubectl delete pytorchjob"):
        run(cluster)
    assert cluster.polls == 0 and cluster.deleted == []  # neither watched nor deleted: it is not ours


def test_a_job_that_outlives_the_timeout_is_deleted_and_fails_the_step():
    cluster = FakeCluster([(RUNNING, [pod("master-0", "Running"), pod("worker-0", "Pending", reason="Unschedulable")])])
    with pytest.raises(TrainingError, match=r"did not finish within 30 s \(job Running; master-0 Running, worker-0 Pending\)"):
        run(cluster, timeout_s=30)
    assert cluster.deleted == [job_name(RUN_ID)]


def test_cancelling_the_step_with_sigterm_deletes_the_job():
    def sigterm_on_second_poll(polls: int) -> None:
        if polls == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    cluster = FakeCluster([(RUNNING, [pod("master-0", "Running")])], on_poll=sigterm_on_second_poll)
    with pytest.raises(Cancelled, match="cancelled"):
        run(cluster)
    assert cluster.deleted == [job_name(RUN_ID)]
    assert signal.getsignal(signal.SIGTERM) is previous  # the step's own handler is restored


def test_the_cluster_launcher_refuses_a_store_its_pods_cannot_reach():
    cfg = TrainConfig(store_uri="/home/me/store", dataset_prefix="p", output_prefix="o", num_ps=1)
    with pytest.raises(TrainingError, match="expected an Azure Blob store URI .* its pods cannot read '/home/me/store'"):
        run_pytorchjob(cfg, RUN_ID, 60, 3, PyTorchJobSettings("ns"), FakeCluster([]))


# --- render ---------------------------------------------------------------------------------------


def pipeline_defaults() -> dict:
    from pipelines.pipeline import training_pipeline

    params = inspect.signature(training_pipeline.pipeline_func).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def test_render_writes_the_job_the_train_step_would_create_for_the_pipeline_parameters(tmp_path, crd_schema):
    params = {**pipeline_defaults(), "store_uri": BLOB, "epochs": 3, "num_workers": 4, "train_mode": "async", "train_backoff_limit": 5,
              "train_checkpoint_every": 7, "train_max_staleness": 3, "train_bf16": True, "train_augment": "none",
              "train_loader_workers": 2, "train_prefetch": 4, "train_shuffle_window": 512, "momentum": 0.5}
    path = render_pytorchjob(params, tmp_path / "out")
    text = path.read_text()
    assert path.name == "pytorchjob.yaml" and text.startswith("# The PyTorchJob the train step creates")
    job = yaml.safe_load(text)
    jsonschema.validate(job, crd_schema)
    assert job["metadata"]["name"] == "train-run-id" and job["spec"]["runPolicy"]["backoffLimit"] == 5
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    config = from_argv(job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"][3:])
    assert (config.epochs, config.mode, config.output_prefix) == (3, "async", "runs/RUN_ID/model")
    assert (config.checkpoint_every, config.max_staleness, config.bf16, config.momentum) == (7, 3, True, 0.5)
    assert (config.augment, config.loader_workers, config.prefetch, config.shuffle_window) == ("none", 2, 4, 512)


@pytest.mark.parametrize("dropped", ["train_timeout_s", "train_prefetch"])
def test_render_refuses_parameters_without_a_launch_setting_or_a_knob(tmp_path, dropped):
    params = {**pipeline_defaults(), "store_uri": BLOB}
    del params[dropped]
    with pytest.raises(ValueError, match=f"expected .*missing \\['{dropped}'\\]"):
        render_pytorchjob(params, tmp_path / "out")
