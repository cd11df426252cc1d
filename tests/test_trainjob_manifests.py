"""Cluster contract of the ``trainjob`` launcher: the TrainJob and the ClusterTrainingRuntime against the real
Trainer v2.2 (what Kubeflow 26.03 ships) and v2.3 CRD schemas, with unknown fields as errors, and the
topology, GPU scheduling, identity and pod security they must carry.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from components.cluster import TRAINING_POD_LABELS, GpuProfile
from components.training.config import TrainConfig, from_argv
from components.training.pytorchjob import PyTorchJobSettings, build_pytorchjob
from components.training.render import SHIPPED_RUNTIMES, render_training, shipped_runtimes_text
from components.training.trainjob import (
    SHIPPED_NUM_PS,
    RuntimeSettings,
    TrainJobSettings,
    build_network_policy,
    build_runtime,
    build_trainjob,
    runtime_name,
)
from tests import k8s_schema
from tests.k8s_schema import SCHEMAS, pruned_fields
from tests.kustomize import render as render_kustomization

ROOT = Path(__file__).resolve().parents[1]
RUN_ID = "4f1c2b9e-1234-4cde-9abc-0123456789ab"
BLOB = "https://acct.blob.core.windows.net/data/kfp"
TRAINJOB_SCHEMAS = ["trainer.kubeflow.org_trainjobs-v2.2.yaml", "trainer.kubeflow.org_trainjobs.yaml"]
RUNTIME_SCHEMAS = ["trainer.kubeflow.org_clustertrainingruntimes-v2.2.yaml", "trainer.kubeflow.org_clustertrainingruntimes.yaml"]
requires_schemas = pytest.mark.skipif(not all((SCHEMAS / f).is_file() for f in TRAINJOB_SCHEMAS + RUNTIME_SCHEMAS),
                                      reason=f"needs the Kubeflow Trainer CRD schemas {', '.join(TRAINJOB_SCHEMAS + RUNTIME_SCHEMAS)} "
                                             "(from kubeflow/trainer manifests/base/crds/: the -v2.2 ones at tag v2.2.0, the others at v2.3.0) in ../shared/schemas/ "
                                             f"beside this clone ({SCHEMAS}, absent): put them there to run these checks")


def cluster_config(**overrides: Any) -> TrainConfig:
    fields = {"num_ps": 2, "num_workers": 3, **overrides}
    return TrainConfig(store_uri=BLOB, dataset_prefix="prepared/0123abcd", output_prefix=f"runs/{RUN_ID}/model", **fields)


def trainjob(**overrides: Any) -> dict[str, Any]:
    return build_trainjob(cluster_config(**overrides), RUN_ID, TrainJobSettings(namespace="kubeflow-user"), timeout_s=3600)


def schema_errors(manifest: dict[str, Any], file: str) -> list[str]:
    """jsonschema violations plus every field the API server would prune (unknown fields are errors)."""
    schema = k8s_schema.crd_schema(file, "v1alpha1")
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(manifest)]
    return errors + [f"{path}: unknown field" for path in pruned_fields(manifest, schema)]


def replicated(runtime: dict[str, Any], name: str) -> dict[str, Any]:
    return next(j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] == name)


def patch_of(job: dict[str, Any], name: str) -> dict[str, Any]:
    (patch,) = job["spec"]["runtimePatches"]
    return next(j for j in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"] if j["name"] == name)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- against the CRD schemas ---------------------------------------------------------------------


@requires_schemas
@pytest.mark.parametrize("file", TRAINJOB_SCHEMAS)
@pytest.mark.parametrize("num_ps", [1, 2, 8])
def test_the_trainjob_validates_against_trainer_2_2_and_2_3_with_unknown_fields_as_errors(file: str, num_ps: int) -> None:
    job = trainjob(num_ps=num_ps)
    assert schema_errors(job, file) == []
    broken = copy.deepcopy(job)
    patch_of(broken, "node")["template"]["spec"]["template"]["spec"]["nodeSelecter"] = {}
    assert any("nodeSelecter: unknown field" in e for e in schema_errors(broken, file))  # the check does catch a typo


@requires_schemas
@pytest.mark.parametrize("file", RUNTIME_SCHEMAS)
@pytest.mark.parametrize("num_ps", SHIPPED_NUM_PS)
def test_every_shipped_runtime_validates_against_trainer_2_2_and_2_3_with_unknown_fields_as_errors(file: str, num_ps: int) -> None:
    runtime = build_runtime(RuntimeSettings(num_ps=num_ps))
    assert schema_errors(runtime, file) == []
    broken = copy.deepcopy(runtime)
    replicated(broken, "ps")["template"]["spec"]["template"]["spec"]["containers"][0]["resorces"] = {}
    assert any("resorces: unknown field" in e for e in schema_errors(broken, file))


def test_the_committed_runtimes_are_what_the_builder_generates_and_kustomize_renders_them(monkeypatch) -> None:
    monkeypatch.delenv("PIPELINE_IMAGE", raising=False)
    assert (ROOT / SHIPPED_RUNTIMES).read_text() == shipped_runtimes_text(), "stale: run python -m components.training.render"
    rendered = render_kustomization(ROOT / "manifests" / "trainer")
    assert [r["metadata"]["name"] for r in rendered] == [runtime_name(p) for p in SHIPPED_NUM_PS]
    assert all("namespace" not in r["metadata"] for r in rendered)  # cluster-scoped


# --- topology and scheduling ---------------------------------------------------------------------


def test_the_runtime_has_a_ps_job_of_p_cpu_pods_and_a_trainer_node_job() -> None:
    runtime = build_runtime(RuntimeSettings(num_ps=4))
    ps, node = replicated(runtime, "ps"), replicated(runtime, "node")
    ps_job = ps["template"]["spec"]
    assert (ps["replicas"], ps_job["parallelism"], ps_job["completions"], ps_job["completionMode"]) == (1, 4, 4, "Indexed")
    ps_pod = ps_job["template"]["spec"]
    assert "nvidia.com/gpu" not in ps_pod["containers"][0]["resources"]["limits"] and "nodeSelector" not in ps_pod
    assert node["template"]["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    assert "parallelism" not in node["template"]["spec"]  # the Trainer sizes it from numNodes
    assert node["dependsOn"] == [{"name": "ps", "status": "Ready"}]  # GPUs are claimed once the servers run
    assert "trainer.kubeflow.org/trainjob-ancestor-step" not in ps["template"].get("metadata", {}).get("labels", {})
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    assert runtime["spec"]["template"]["spec"]["network"]["enableDNSHostnames"] is True


def test_the_trainjob_names_the_runtime_for_its_ps_count_and_asks_one_gpu_per_node() -> None:
    job = trainjob(num_ps=2, num_workers=3)
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "kfp-ps-classifier-ps2"}
    assert job["spec"]["trainer"]["numNodes"] == 3
    assert job["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["activeDeadlineSeconds"] == 3600


def test_gpu_scheduling_goes_to_the_node_pods_only_through_runtime_patches() -> None:
    job = trainjob()
    node_pod = patch_of(job, "node")["template"]["spec"]["template"]["spec"]
    ps_pod = patch_of(job, "ps")["template"]["spec"]["template"]["spec"]
    profile = GpuProfile()
    assert node_pod["nodeSelector"] == profile.node_selector and node_pod["tolerations"] == profile.tolerations()
    assert "nodeSelector" not in ps_pod and "tolerations" not in ps_pod


def test_every_pod_gets_the_service_account_workload_identity_and_the_run_label() -> None:
    job = trainjob()
    for name in ("ps", "node"):
        template = patch_of(job, name)["template"]["spec"]["template"]
        assert template["spec"]["serviceAccountName"] == "kfp-ps-training"
        assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        assert template["metadata"]["labels"]["pipelines.kubeflow.org/run-id"] == RUN_ID


def test_both_jobs_get_exactly_the_run_s_configuration() -> None:
    job = trainjob()
    ps_env = env_of(patch_of(job, "ps")["template"]["spec"]["template"]["spec"]["containers"][0])
    node_env = {e["name"]: e["value"] for e in job["spec"]["trainer"]["env"]}
    assert from_argv(shlex.split(ps_env["TRAIN_ARGV"])) == cluster_config()
    assert from_argv(shlex.split(node_env["TRAIN_ARGV"])) == cluster_config()


def test_a_ps_count_without_a_shipped_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected num_ps in \(1, 2, 4, 8\) for the trainjob launcher .* got 3"):
        trainjob(num_ps=3)


def test_a_permanent_exit_code_fails_the_jobset_and_anything_else_restarts_it() -> None:
    runtime = build_runtime(RuntimeSettings(num_ps=1, max_restarts=5))
    policy = runtime["spec"]["template"]["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == 5
    assert policy["rules"] == [{"name": "permanent-exit-code", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]
    for name in ("ps", "node"):
        spec = replicated(runtime, name)["template"]["spec"]
        (rule,) = spec["podFailurePolicy"]["rules"]
        assert spec["backoffLimit"] == 0 and spec["template"]["spec"]["restartPolicy"] == "Never"
        assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == name
        assert rule["onExitCodes"]["values"] == list(range(1, 128))  # 200 (retryable) and 137 (killed) restart


# --- pods: networking, sidecar, security ---------------------------------------------------------


def runtime_pods() -> list[dict[str, Any]]:
    runtime = build_runtime(RuntimeSettings(num_ps=2))
    return [replicated(runtime, n)["template"]["spec"]["template"] for n in ("ps", "node")]


def pytorchjob_pods() -> list[dict[str, Any]]:
    job = build_pytorchjob(cluster_config(num_ps=1), RUN_ID, PyTorchJobSettings("ns"), 3600, 3)
    return [r["template"] for r in job["spec"]["pytorchReplicaSpecs"].values()]


def test_runtime_pods_have_no_sidecar_tensorpipe_on_eth0_and_their_rank_variables() -> None:
    for pod in runtime_pods():
        assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        env = env_of(pod["spec"]["containers"][0])
        assert env["TP_SOCKET_IFNAME"] == "eth0" and env["MASTER_PORT"] == "29500"
        assert env["JOBSET_NAME"] == {"fieldRef": {"fieldPath": "metadata.labels['jobset.sigs.k8s.io/jobset-name']"}}
        assert env["REPLICATED_JOB"] == {"fieldRef": {"fieldPath": "metadata.labels['jobset.sigs.k8s.io/replicatedjob-name']"}}


@pytest.mark.parametrize("pods", [runtime_pods, pytorchjob_pods], ids=["trainjob", "pytorchjob"])
def test_every_training_pod_runs_restricted_with_a_writable_tmp_only(pods) -> None:
    for pod in pods():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
            assert security["readOnlyRootFilesystem"] is True and security["seccompProfile"] == {"type": "RuntimeDefault"}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]


def test_the_baseline_policy_selects_every_trainjob_pod_and_the_job_s_own_policy_only_its_peers() -> None:
    documents = yaml.safe_load_all((ROOT / "manifests" / "base" / "networkpolicy-training.yaml").read_text())
    baseline = next(d for d in documents if d["metadata"]["name"] == "kfp-ps-trainjob-baseline")
    selector = baseline["spec"]["podSelector"]
    assert selector["matchLabels"] == TRAINING_POD_LABELS
    assert selector["matchExpressions"] == [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]  # JobSet sets it
    for pod in runtime_pods():
        assert selector["matchLabels"].items() <= pod["metadata"]["labels"].items()
    job = trainjob()
    policy = build_network_policy(job)
    same_job = {"matchLabels": {"jobset.sigs.k8s.io/jobset-name": job["metadata"]["name"]}}
    assert policy["metadata"]["namespace"] == "kubeflow-user" and policy["spec"]["podSelector"] == same_job
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": same_job}]}]  # no ports: every port
    assert policy["spec"]["egress"] == [{"to": [{"podSelector": same_job}]}]


# --- render ---------------------------------------------------------------------------------------


def pipeline_defaults() -> dict[str, Any]:
    import inspect

    from pipelines.pipeline import training_pipeline

    params = inspect.signature(training_pipeline.pipeline_func).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


@requires_schemas
def test_render_writes_the_trainjob_and_its_runtime_for_the_pipeline_parameters(tmp_path: Path) -> None:
    params = {**pipeline_defaults(), "store_uri": BLOB, "num_ps": 2, "num_workers": 4, "epochs": 3}
    paths = render_training(params, tmp_path)
    assert [p.name for p in paths] == ["trainjob.yaml", "clustertrainingruntime.yaml"]  # no PyTorchJob for num_ps=2
    job, runtime = (yaml.safe_load(p.read_text()) for p in paths)
    assert job["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"] == "kfp-ps-classifier-ps2"
    for file in TRAINJOB_SCHEMAS:
        assert schema_errors(job, file) == []
    for file in RUNTIME_SCHEMAS:
        assert schema_errors(runtime, file) == []
    config = from_argv(shlex.split(env_of({"env": job["spec"]["trainer"]["env"]})["TRAIN_ARGV"]))
    assert (config.num_ps, config.num_workers, config.epochs, config.output_prefix) == (2, 4, 3, "runs/RUN_ID/model")
    assert [p.name for p in render_training({**params, "num_ps": 1}, tmp_path / "one")][-1] == "pytorchjob.yaml"


@requires_schemas
def test_pipelines_render_writes_a_valid_trainjob_and_the_shipped_runtime_it_names(tmp_path: Path, monkeypatch) -> None:
    from pipelines.cli import main

    monkeypatch.delenv("PIPELINE_IMAGE", raising=False)
    main(["render", "--output-dir", str(tmp_path), "--param", f"store_uri={BLOB}", "--param", "num_ps=4", "--param", "num_workers=8"])
    job = yaml.safe_load((tmp_path / "trainjob.yaml").read_text())
    runtime = yaml.safe_load((tmp_path / "clustertrainingruntime.yaml").read_text())
    assert all(schema_errors(job, f) == [] for f in TRAINJOB_SCHEMAS) and all(schema_errors(runtime, f) == [] for f in RUNTIME_SCHEMAS)
    assert job["spec"]["trainer"]["numNodes"] == 8 and replicated(runtime, "ps")["template"]["spec"]["parallelism"] == 4
    shipped = list(yaml.safe_load_all((ROOT / SHIPPED_RUNTIMES).read_text()))
    assert runtime in shipped  # the runtime the job names is the one the project ships
    assert not (tmp_path / "pytorchjob.yaml").exists()  # four shards do not fit a PyTorchJob's one Master
