"""The InferenceService builder and the YAML renderer: pure functions, checked against the real CRD schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.cluster import GpuProfile
from components.deploy.inferenceservice import (
    DEPLOYMENT_MODE_ANNOTATION,
    PREDICTOR_FIELDS,
    SPEC_HASH_ANNOTATION,
    TAG_ROUTING_ANNOTATION,
    DeploymentMode,
    InferenceServiceSettings,
    build_inference_service,
)
from components.deploy.render import INFERENCE_SERVICE_FILE, render_inference_service, write_manifests
from components.deploy.sizing import derive_resources
from components.monitoring.collection import CollectionOptions
from tests.helpers import sample_profile
from tests.k8s_schema import INFERENCE_SERVICE_CRDS, requires_schemas, schema_errors

BLOB = "https://acct.blob.core.windows.net/models/models/mnist/versions/3"
DIGEST = "ab" * 32  # the version's MANIFEST.json SHA-256
COLLECTED = "https://acct.blob.core.windows.net/collected"


def settings(**overrides: Any) -> InferenceServiceSettings:
    base: dict[str, Any] = dict(name="mnist", namespace="team-a", model_uri=BLOB, manifest_sha256=DIGEST, model_name="mnist",
                                image="kfpps.azurecr.io/kfp-ps-classifier:0.1.0", model_version=3)
    return InferenceServiceSettings(**{**base, **overrides})


def predictor(**overrides: Any) -> dict[str, Any]:
    return build_inference_service(settings(**overrides))["spec"]["predictor"]


VARIANTS = {
    "knative-gpu": {},
    "knative-canary": {"canary_traffic_percent": 10},
    "knative-cpu-scale-to-zero": {"gpus": 0, "min_replicas": 0},
    "standard-gpu": {"mode": DeploymentMode.STANDARD, "scale_metric": "cpu", "scale_target": 70},
    "two-gpus-custom-pool": {"gpus": 2, "gpu_profile": GpuProfile(node_selector={"pool": "a100"}, taint_value="a100")},
    "collecting": {"collection": CollectionOptions(COLLECTED, 0.2, 0.02)},
    # What a profile derives (components.deploy.sizing): a Mi quantity, whole cores, a concurrency target.
    "sized-from-a-profile": derive_resources(sample_profile(peak_rss_mib=300)).settings_fields(),
}


@requires_schemas
@pytest.mark.parametrize("crd", INFERENCE_SERVICE_CRDS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_validates_against_kserve_0_18_and_the_newest_crd_with_no_field_dropped(variant: str, crd: str) -> None:
    manifest = build_inference_service(settings(**VARIANTS[variant]))

    assert schema_errors(manifest, crd) == []


@requires_schemas
@pytest.mark.parametrize("crd", INFERENCE_SERVICE_CRDS)
def test_the_schema_check_reports_fields_the_api_server_would_drop(crd: str) -> None:
    manifest = build_inference_service(settings())
    manifest["spec"]["predictor"]["containers"][0]["readinessprobe"] = {}  # a typo the CRD would silently prune

    assert schema_errors(manifest, crd) == [
        ".spec.predictor.containers[0].readinessprobe: unknown field, the API server would drop it"
    ]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_only_long_standing_predictor_fields_are_sent(variant: str) -> None:
    manifest = build_inference_service(settings(**VARIANTS[variant]))

    assert set(manifest["spec"]) == {"predictor"}
    assert set(manifest["spec"]["predictor"]) <= PREDICTOR_FIELDS


def test_the_predictor_downloads_its_pinned_version_itself_so_kserve_injects_no_storage_initializer() -> None:
    spec = predictor()
    (container,) = spec["containers"]

    assert container["name"] == "kserve-container"
    assert container["image"] == "kfpps.azurecr.io/kfp-ps-classifier:0.1.0"
    assert container["command"] + container["args"] == [
        "python", "-m", "serving", "--model-uri", f"{BLOB}#manifest-sha256={DIGEST}", "--model-name", "mnist",
        "--http-port", "8080",
        "--listen-address", "0.0.0.0"]  # the server's own default is loopback: probes and the router come from outside
    # STORAGE_URI (or storageUri) would make KServe inject its storage initializer, which the workload-identity
    # webhook never sees; the main container gets the identity from the label and the service account.
    assert [e["name"] for e in container["env"]] == ["HOME"]
    assert "storageUri" not in spec and "initContainers" not in spec
    assert spec["labels"]["azure.workload.identity/use"] == "true" and spec["serviceAccountName"] == "kfp-ps-serving"
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]


def test_without_a_digest_the_model_uri_is_unpinned() -> None:
    (container,) = predictor(manifest_sha256=None)["containers"]

    assert container["args"][:2] == ["--model-uri", BLOB]


def test_liveness_leaves_time_for_the_download_and_the_hash_checks() -> None:
    (container,) = predictor()["containers"]

    assert container["livenessProbe"]["initialDelaySeconds"] >= 120
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/mnist/ready"


def test_gpu_resources_node_selector_and_toleration_come_from_the_shared_gpu_profile() -> None:
    spec = predictor()
    resources = spec["containers"][0]["resources"]

    assert resources["limits"]["nvidia.com/gpu"] == "1" and resources["requests"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == GpuProfile().node_selector
    assert spec["tolerations"] == GpuProfile().tolerations()


def test_a_custom_gpu_profile_changes_selector_toleration_and_count() -> None:
    profile = GpuProfile(node_selector={"agentpool": "gpua100"}, taint_key="gpu", taint_value="a100")
    spec = predictor(gpus=2, gpu_profile=profile)

    assert spec["nodeSelector"] == {"agentpool": "gpua100"}
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_a_cpu_only_service_stays_off_the_gpu_pool() -> None:
    spec = predictor(gpus=0)

    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]


def test_the_pod_runs_restricted_with_a_writable_tmp_only() -> None:
    spec = predictor()
    container = spec["containers"][0]

    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    assert "securityContext" not in spec  # pod-level fields are refused by Knative by default


def test_identity_scaling_and_the_model_level_readiness_probe() -> None:
    spec = predictor(min_replicas=2, max_replicas=5, scale_target=4)

    assert spec["serviceAccountName"] == "kfp-ps-serving"
    assert spec["labels"]["azure.workload.identity/use"] == "true"
    assert (spec["minReplicas"], spec["maxReplicas"], spec["scaleMetric"], spec["scaleTarget"]) == (2, 5, "concurrency", 4)
    assert spec["containers"][0]["readinessProbe"]["httpGet"] == {"path": "/v2/models/mnist/ready", "port": 8080}


def test_deployment_mode_is_annotated_by_todays_names_and_tag_routing_comes_with_knative_only() -> None:
    knative = build_inference_service(settings())["metadata"]["annotations"]
    standard = build_inference_service(settings(mode="Standard", scale_metric="cpu"))["metadata"]["annotations"]

    assert knative == {DEPLOYMENT_MODE_ANNOTATION: "Knative", TAG_ROUTING_ANNOTATION: "true"}
    assert standard == {DEPLOYMENT_MODE_ANNOTATION: "Standard"}


@pytest.mark.parametrize(("given", "mode"), [("Knative", DeploymentMode.KNATIVE), ("Standard", DeploymentMode.STANDARD),
                                             ("Serverless", DeploymentMode.KNATIVE), ("RawDeployment", DeploymentMode.STANDARD)])
def test_the_old_mode_names_are_accepted_and_mapped_to_todays(given: str, mode: DeploymentMode) -> None:
    s = settings(mode=given, scale_metric="cpu")

    assert s.mode is mode
    assert build_inference_service(s)["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == mode.value


@pytest.mark.parametrize("given", ["Canary", "knative", "ModelMesh", ""])
def test_an_unknown_mode_is_refused_naming_the_accepted_values(given: str) -> None:
    with pytest.raises(ValueError) as failure:
        DeploymentMode(given)

    assert str(failure.value) == (f"expected deployment_mode 'Standard' or 'Knative' (or their old names "
                                  f"'RawDeployment', 'Serverless'), got {given!r}")


def test_standard_mode_declares_the_http_readiness_probe_on_the_model_level_path() -> None:
    # Without one, KServe's Standard mode gives the pod a TCP probe on 8080 that passes before the model loads.
    (container,) = predictor(mode=DeploymentMode.STANDARD, scale_metric="cpu")["containers"]

    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/models/mnist/ready", "port": 8080}
    assert "tcpSocket" not in container["readinessProbe"]


def test_canary_traffic_is_set_only_when_asked() -> None:
    assert "canaryTrafficPercent" not in predictor()
    assert predictor(canary_traffic_percent=20)["canaryTrafficPercent"] == 20


def test_the_spec_hash_follows_the_pod_spec_not_the_bookkeeping_annotations() -> None:
    def spec_hash(**overrides: Any) -> str:
        return predictor(**overrides)["annotations"][SPEC_HASH_ANNOTATION]

    assert spec_hash() == spec_hash(model_version=99, rollout_id="run-7", canary_traffic_percent=10)
    assert spec_hash() != spec_hash(model_uri=BLOB.replace("/3", "/4"))
    assert spec_hash() != spec_hash(manifest_sha256="cd" * 32)
    assert spec_hash() != spec_hash(memory="4Gi")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"image": "kfpps.azurecr.io/kfp-ps-classifier:latest"}, "expected a pinned image"),
    ({"model_uri": "/home/me/models/mnist/versions/3"}, "expected the model version's Azure Blob URI"),
    ({"model_uri": f"{BLOB}#manifest-sha256={DIGEST}"}, "no fragment"),
    ({"manifest_sha256": "ABC"}, "expected a manifest SHA-256 of 64 lowercase hex digits, got 'ABC'"),
    ({"name": "MNIST_v2"}, "expected a service name of lowercase letters"),
    ({"name": "m" * 48}, "at most 47 characters"),
    ({"mode": "Standard"}, "expected scale_metric in ('cpu', 'memory') for Standard, got 'concurrency'"),
    ({"mode": "RawDeployment", "scale_metric": "cpu", "canary_traffic_percent": 10}, "in Knative mode only"),
    ({"min_replicas": 4, "max_replicas": 2}, "min_replicas <= max_replicas"),
    ({"mode": "Canary"}, "expected deployment_mode 'Standard' or 'Knative'"),
    ({"collection": CollectionOptions("/var/collected")}, "expected collect_uri to be an Azure Blob URI"),
])
def test_invalid_settings_are_refused_with_what_was_expected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(**overrides)


def test_collection_options_reach_the_predictor_as_its_flags_and_only_when_asked() -> None:
    args = predictor(collection=CollectionOptions(COLLECTED, 0.25, 0.05))["containers"][0]["args"]
    assert args[-6:] == ["--collect-uri", COLLECTED, "--collect-fraction", "0.25", "--collect-images-fraction", "0.05"]
    assert "--collect-uri" not in predictor()["containers"][0]["args"]
    assert "--collect-uri" not in predictor(collection=CollectionOptions(COLLECTED, 0.0, 0.0))["containers"][0]["args"]
    # A change of what is collected is a change of the pod: it rolls out.
    assert predictor()["annotations"][SPEC_HASH_ANNOTATION] != predictor(collection=CollectionOptions(COLLECTED))["annotations"][SPEC_HASH_ANNOTATION]


@pytest.mark.parametrize(("fraction", "images", "message"), [
    (1.5, 0.0, "expected collect_fraction between 0 and 1, got 1.5"),
    (0.1, 0.2, r"expected collect_images_fraction between 0 and collect_fraction \(0.1\)"),
    (0.1, -0.1, "expected collect_images_fraction between 0"),
])
def test_bad_collection_fractions_are_refused_with_what_was_expected(fraction: float, images: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CollectionOptions(COLLECTED, fraction, images)


def test_render_and_write_manifests_produce_yaml_that_reads_back_as_the_manifest(tmp_path: Path) -> None:
    s = settings()
    job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "train"}}

    written = write_manifests(tmp_path / "out", s, extra={"pytorchjob.yaml": job})

    assert [p.name for p in written] == [INFERENCE_SERVICE_FILE, "pytorchjob.yaml"]
    assert yaml.safe_load(written[0].read_text()) == build_inference_service(s)
    assert written[0].read_text() == render_inference_service(s)
    assert written[0].read_text().startswith("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n")
    assert yaml.safe_load(written[1].read_text()) == job


def test_write_manifests_refuses_file_names_that_are_not_plain_yaml_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a plain file name"):
        write_manifests(tmp_path, settings(), extra={"../escape.yaml": {}})
    assert list(tmp_path.iterdir()) == []


def test_settings_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings().gpus = 4  # type: ignore[misc]
