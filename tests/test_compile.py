"""Compile tests: the package the Kubeflow UI receives has the five steps, the gate, pinned images, no secrets."""

from __future__ import annotations

import re

import pytest
import yaml

from pipelines.cli import compile_pipeline

STEPS = ["prepare-data", "train-model", "evaluate-model", "push-model", "deploy-model"]


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> list[dict]:
    path = compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")
    return list(yaml.safe_load_all(path.read_text()))


@pytest.fixture(scope="module")
def package(documents) -> dict:
    return documents[0]  # the pipeline spec; the second document is kfp-kubernetes' platform spec


def test_five_steps_chained_in_order(package):
    tasks = package["root"]["dag"]["tasks"]
    assert set(STEPS[:4]) <= set(tasks)
    assert tasks["train-model"]["dependentTasks"] == ["prepare-data"]
    assert set(tasks["evaluate-model"]["dependentTasks"]) == {"prepare-data", "train-model"}
    assert "evaluate-model" in tasks["push-model"]["dependentTasks"]


def test_deploy_runs_only_inside_the_gate_condition(package):
    condition = package["root"]["dag"]["tasks"]["condition-1"]
    assert "evaluate-model" in condition["dependentTasks"] and "push-model" in condition["dependentTasks"]
    assert condition["triggerPolicy"]["condition"].endswith("== 'accepted'")
    assert "deploy-model" in package["components"]["comp-condition-1"]["dag"]["tasks"]


def test_push_and_deploy_are_never_cached(package):
    tasks = package["root"]["dag"]["tasks"]
    deploy = package["components"]["comp-condition-1"]["dag"]["tasks"]["deploy-model"]
    assert tasks["push-model"]["cachingOptions"] == {} and deploy["cachingOptions"] == {}


def test_every_image_is_pinned_and_none_installs_packages_at_start(package):
    executors = package["deploymentSpec"]["executors"].values()
    for executor in executors:
        image = executor["container"]["image"]
        assert re.search(r":[\w.-]+$|@sha256:[0-9a-f]{64}$", image) and not image.endswith(":latest")
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_pipeline_and_parameters_carry_descriptions(package):
    assert package["pipelineInfo"]["description"].startswith("Train an image classifier")
    params = package["root"]["inputDefinitions"]["parameters"]
    assert all(p.get("description") for p in params.values())
    assert {"data_uri", "store_uri"} <= {n for n, p in params.items() if not p.get("isOptional")}


def test_every_step_pod_uses_workload_identity(documents):
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == 5
    assert all(e["podMetadata"]["labels"] == {"azure.workload.identity/use": "true"} for e in executors.values())


def test_no_secret_material_in_the_package(documents):
    text = yaml.safe_dump_all(documents)
    for pattern in ("AccountKey=", "SharedAccessSignature", "DefaultEndpointsProtocol", "password", "client_secret"):
        assert pattern.lower() not in text.lower()


def test_render_writes_an_inference_service_for_the_given_parameters(tmp_path):
    from pipelines.cli import main

    main(["render", "--output-dir", str(tmp_path), "--version", "7", "--param", "store_uri=https://acct.blob.core.windows.net/models",
          "--param", "deployment_mode=RawDeployment", "--param", "serving_gpus=2"])
    isvc = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())
    predictor = isvc["spec"]["predictor"]
    container = predictor["containers"][0]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"  # the old name, mapped
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    model_uri = container["args"][container["args"].index("--model-uri") + 1]
    assert model_uri == "https://acct.blob.core.windows.net/models/models/digits/versions/7"  # no digest given: unpinned
    assert "STORAGE_URI" not in {e["name"] for e in container["env"]}
    job = yaml.safe_load((tmp_path / "pytorchjob.yaml").read_text())
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert job["kind"] == "PyTorchJob" and replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    worker = replicas["Worker"]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["nodeSelector"] == predictor["nodeSelector"]  # one GPU scheduling profile for both


def test_render_pins_the_version_to_a_given_manifest_digest(tmp_path):
    from pipelines.cli import main

    digest = "5e" * 32
    main(["render", "--output-dir", str(tmp_path), "--version", "7", "--manifest-sha256", digest,
          "--param", "store_uri=https://acct.blob.core.windows.net/models"])
    args = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())["spec"]["predictor"]["containers"][0]["args"]
    assert args[args.index("--model-uri") + 1] == f"https://acct.blob.core.windows.net/models/models/digits/versions/7#manifest-sha256={digest}"


@pytest.mark.parametrize(("param", "message"), [
    ("deployment_mode=Canary", "deployment_mode/canary_percent/serving_*: expected deployment_mode 'Standard' or 'Knative' (or their old names "
                               "'RawDeployment', 'Serverless'), got 'Canary'"),
    ("canary_percent=150", "deployment_mode/canary_percent/serving_*: expected canary_percent between 0 (no canary) and 100, got 150"),
    ("serving_memory=2GB", "deployment_mode/canary_percent/serving_*: expected serving_memory as a Kubernetes memory quantity "
                           "like '1Gi' or '768Mi' (or '' to size from the profile), got '2GB'"),
    ("collect_fraction=1.5", "collect_fraction/collect_images_fraction: expected collect_fraction between 0 and 1, got 1.5"),
    ("collect_images_fraction=0.5", "collect_fraction/collect_images_fraction: expected collect_images_fraction between 0 and "
                                    "collect_fraction (0.1): an image is saved only with its record, got 0.5"),
])
def test_render_and_run_refuse_bad_deploy_parameters_before_doing_anything(tmp_path, param, message):
    from pipelines.cli import main

    for argv in (["render", "--output-dir", str(tmp_path / "out")], ["run", "--local", "--workdir", str(tmp_path / "work")]):
        with pytest.raises(SystemExit) as failure:
            main([*argv, "--param", param])
        assert str(failure.value) == f"error: pipeline parameters {message}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize(("param", "message"), [
    ("profile_seconds=-1", "expected profile seconds per level of 0 (no profile) or more, got -1"),
    ("serving_latency_budget_ms=0", "expected latency_budget_ms > 0"),
])
def test_run_refuses_bad_profile_parameters_before_doing_anything(tmp_path, param, message):
    from pipelines.cli import main

    with pytest.raises(SystemExit) as failure:
        main(["run", "--local", "--workdir", str(tmp_path / "work"), "--param", param])
    assert str(failure.value).startswith(f"error: pipeline parameters serving_latency_budget_ms/profile_seconds: {message}")
    assert not (tmp_path / "work").exists()


def test_render_shows_what_the_predictor_collects(tmp_path) -> None:
    from pipelines.cli import main

    main(["render", "--output-dir", str(tmp_path), "--param", "collect_uri=https://acct.blob.core.windows.net/collected",
          "--param", "collect_fraction=0.5", "--param", "collect_images_fraction=0.05"])
    args = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())["spec"]["predictor"]["containers"][0]["args"]
    assert args[args.index("--collect-uri"):] == ["--collect-uri", "https://acct.blob.core.windows.net/collected",
                                                  "--collect-fraction", "0.5", "--collect-images-fraction", "0.05"]


@pytest.mark.parametrize("command", ["submit", "schedule"])
@pytest.mark.parametrize(("param", "message"), [
    ("deployment_mode=Serverles", "expected deployment_mode 'Standard' or 'Knative' (or their old names 'RawDeployment', 'Serverless'), got 'Serverles'"),
    ("model_name=Digits", "pipeline parameter 'model_name': expected a model name"),
])
def test_submit_and_schedule_refuse_bad_parameters_before_compiling_or_connecting(command, param, message, capsys, monkeypatch):
    from pipelines import remote_cli
    from pipelines.cli import main

    def never(*args, **kwargs):
        raise AssertionError("compiled or connected despite a bad parameter")

    monkeypatch.setattr(remote_cli, "_package", never)
    monkeypatch.setattr(remote_cli, "_connect", never)
    extra = ["--name", "nightly", "--cron", "0 0 2 * * *"] if command == "schedule" else []
    with pytest.raises(SystemExit) as failure:
        main([command, "--namespace", "ns", "--host", "http://127.0.0.1:9", "--experiment", "dev", *extra,
              "--param", param])
    assert failure.value.code == 1
    assert message in capsys.readouterr().err


def test_the_package_defaults_every_training_knob_to_the_training_configs_value(package):
    from components.training.params import PIPELINE_KNOBS, TRAIN_DEFAULTS

    params = package["root"]["inputDefinitions"]["parameters"]
    for name, field in PIPELINE_KNOBS.items():
        assert params[name].get("defaultValue") == getattr(TRAIN_DEFAULTS, field), f"default of {name} in the package"


def test_the_train_step_gets_every_knob_from_its_pipeline_parameter(package):
    from components.training.params import PIPELINE_KNOBS

    inputs = package["root"]["dag"]["tasks"]["train-model"]["inputs"]["parameters"]
    wired = {field: spec.get("componentInputParameter") for field, spec in inputs.items()}
    assert {field: wired.get(field) for field in PIPELINE_KNOBS.values()} == {f: n for n, f in PIPELINE_KNOBS.items()}


def test_the_serving_resource_overrides_reach_the_deploy_step_and_default_to_the_profile(package):
    params = package["root"]["inputDefinitions"]["parameters"]
    deploy = package["components"]["comp-condition-1"]["dag"]["tasks"]["deploy-model"]["inputs"]["parameters"]
    for name, empty in (("serving_cpu", ""), ("serving_memory", ""), ("serving_scale_target", 0)):
        assert params[name]["defaultValue"] == empty, f"{name}: empty means derived from the version's profile"
        assert deploy[name]["componentInputParameter"] == f"pipelinechannel--{name}"
