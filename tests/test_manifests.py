"""Cluster contract: every kustomize overlay in manifests/ renders, and its resources say what they must.

Rendered with ``kubectl kustomize`` when it is installed, else with the small renderer in
``tests/kustomize.py`` (which refuses kustomize features it does not implement); where kubectl exists, one
test checks that the two agree. The InferenceService is validated against the real CRD schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from components.cluster import TRAINING_POD_LABELS
from components.deploy.examples import example_settings, example_text
from components.deploy.inferenceservice import COMPONENT_LABEL, PART_OF_LABEL
from tests.k8s_schema import INFERENCE_SERVICE_CRDS, requires_schemas, schema_errors
from tests.kustomize import by_kind_and_name, kubectl_available, render, render_in_python, render_with_kubectl

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = {"aks": "kubeflow-user-example-com", "dev": "kubeflow"}  # overlay -> namespace
RUNNER = {"aks": "default-editor", "dev": "pipeline-runner"}  # the service account KFP runs steps as
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TRAINING_SELECTOR = {
    "matchLabels": {"training.kubeflow.org/operator-name": "pytorchjob-controller"},
    "matchExpressions": [{"key": "training.kubeflow.org/job-name", "operator": "Exists"}],
}
TRAINJOB_SELECTOR = {  # what every TrainJob pod carries: the runtime's labels and JobSet's
    "matchLabels": TRAINING_POD_LABELS,
    "matchExpressions": [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}],
}
# The runner's whole permission set: (apiGroup, resource) -> verbs. Nothing else may appear.
ALLOWED_RULES = {
    ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"create", "patch", "delete"},  # each TrainJob's own policy
    ("kubeflow.org", "pytorchjobs"): {"create", "get", "list", "watch", "delete"},
    ("serving.kserve.io", "inferenceservices"): {"create", "get", "list", "watch", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"get", "list", "watch"},
    # the monitoring pipeline's retrain step, through the Kubeflow Pipelines API (its SubjectAccessReview)
    ("pipelines.kubeflow.org", "experiments"): {"get", "list"},
    ("pipelines.kubeflow.org", "pipelines"): {"get", "list"},
    ("pipelines.kubeflow.org", "runs"): {"create", "get"},
}


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, dict[tuple[str, str], dict[str, Any]]]:
    return request.param, by_kind_and_name(render(ROOT / "manifests" / "overlays" / request.param))


def of_kind(resources: dict[tuple[str, str], dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for (k, _), r in resources.items() if k == kind]


@pytest.mark.skipif(not kubectl_available(), reason="kubectl is not installed: nothing to compare the test renderer with")
@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_the_test_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    directory = ROOT / "manifests" / "overlays" / name

    assert by_kind_and_name(render_in_python(directory)) == by_kind_and_name(render_with_kubectl(directory))


def test_every_resource_lands_in_the_overlay_namespace(overlay: tuple[str, dict]) -> None:
    name, resources = overlay

    assert {r["metadata"]["namespace"] for r in resources.values()} == {OVERLAYS[name]}
    assert sorted(k for k, _ in resources) == sorted([
        "AuthorizationPolicy", "AuthorizationPolicy", "InferenceService", "NetworkPolicy", "NetworkPolicy",
        "Role", "RoleBinding", "ServiceAccount", "ServiceAccount",
    ])


def test_the_runner_role_grants_exactly_the_allowed_verbs_and_nothing_cluster_wide(overlay: tuple[str, dict]) -> None:
    name, resources = overlay
    (role,) = of_kind(resources, "Role")

    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])

    assert granted == ALLOWED_RULES
    assert not of_kind(resources, "ClusterRole") and not of_kind(resources, "ClusterRoleBinding")


def test_the_role_is_bound_to_the_pipeline_runner_only(overlay: tuple[str, dict]) -> None:
    name, resources = overlay
    (binding,) = of_kind(resources, "RoleBinding")

    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kfp-ps-pipeline-runner"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RUNNER[name]}]


def test_training_and_serving_service_accounts_carry_a_workload_identity_client_id(overlay: tuple[str, dict]) -> None:
    _, resources = overlay

    for account in ("kfp-ps-training", "kfp-ps-serving"):
        annotations = resources[("ServiceAccount", account)]["metadata"]["annotations"]
        assert GUID.match(annotations["azure.workload.identity/client-id"]), account
        assert resources[("ServiceAccount", account)]["automountServiceAccountToken"] is False


@requires_schemas
@pytest.mark.parametrize("crd", INFERENCE_SERVICE_CRDS)
def test_the_example_inference_service_validates_against_kserve_0_18_and_the_newest_crd(overlay: tuple[str, dict], crd: str) -> None:
    _, resources = overlay
    (isvc,) = of_kind(resources, "InferenceService")

    assert schema_errors(isvc, crd) == []


def test_the_example_inference_service_runs_restricted_with_identity_and_model_probe(overlay: tuple[str, dict]) -> None:
    _, resources = overlay
    (isvc,) = of_kind(resources, "InferenceService")
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]

    assert predictor["serviceAccountName"] == "kfp-ps-serving"
    assert predictor["labels"]["azure.workload.identity/use"] == "true"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/mnist/ready"
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_aks_example_is_scheduled_on_the_tainted_gpu_pool() -> None:
    resources = by_kind_and_name(render(ROOT / "manifests" / "overlays" / "aks"))
    predictor = resources[("InferenceService", "mnist")]["spec"]["predictor"]

    assert predictor["nodeSelector"] == {"kubernetes.azure.com/accelerator": "nvidia"}
    assert predictor["tolerations"] == [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    assert predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("relative", sorted(example_settings()))
def test_the_committed_examples_are_what_the_builder_generates(relative: str) -> None:
    expected = example_text(example_settings()[relative])

    assert (ROOT / relative).read_text() == expected, f"{relative} is stale: run python -m components.deploy.examples"


def test_training_pods_accept_and_open_connections_only_among_training_pods(overlay: tuple[str, dict]) -> None:
    _, resources = overlay
    spec = resources[("NetworkPolicy", "kfp-ps-training-isolation")]["spec"]

    assert spec["podSelector"] == TRAINING_SELECTOR
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"from": [{"podSelector": TRAINING_SELECTOR}]}]
    peers, dns, https = spec["egress"]
    assert peers == {"to": [{"podSelector": TRAINING_SELECTOR}]}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert https["ports"] == [{"protocol": "TCP", "port": 443}]


def test_trainjob_pods_get_no_ingress_and_only_dns_and_https_egress_from_the_baseline(overlay: tuple[str, dict]) -> None:
    _, resources = overlay
    spec = resources[("NetworkPolicy", "kfp-ps-trainjob-baseline")]["spec"]

    assert spec["podSelector"] == TRAINJOB_SELECTOR
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []  # each job's own policy admits its peers
    dns, https = spec["egress"]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert https["ports"] == [{"protocol": "TCP", "port": 443}]


def test_the_model_repository_api_is_denied_and_only_inference_paths_are_allowed(overlay: tuple[str, dict]) -> None:
    _, resources = overlay
    deny = resources[("AuthorizationPolicy", "kfp-ps-serving-deny-repository")]["spec"]
    allow = resources[("AuthorizationPolicy", "kfp-ps-serving-allow-inference")]["spec"]

    assert deny["action"] == "DENY"
    assert deny["rules"] == [{"to": [{"operation": {"paths": ["/v2/repository", "/v2/repository/*"]}}]}]
    assert allow["action"] == "ALLOW"
    gateway_rule, knative_rule = allow["rules"]
    assert gateway_rule["from"] == [{"source": {"namespaces": ["istio-system"]}}]
    assert set(gateway_rule["to"][0]["operation"]["paths"]) == {"/v1/models/*", "/v2/models/*", "/v2/health/*", "/v2"}
    assert knative_rule == {"from": [{"source": {"namespaces": ["knative-serving"]}}]}


def test_the_serving_policies_select_the_predictor_pods_the_builder_labels(overlay: tuple[str, dict]) -> None:
    _, resources = overlay
    (isvc,) = of_kind(resources, "InferenceService")
    pod_labels = isvc["spec"]["predictor"]["labels"]

    for policy in of_kind(resources, "AuthorizationPolicy"):
        selector = policy["spec"]["selector"]["matchLabels"]
        assert selector == {COMPONENT_LABEL: "serving", PART_OF_LABEL: "kfp-ps-classifier"}
        assert selector.items() <= pod_labels.items()
