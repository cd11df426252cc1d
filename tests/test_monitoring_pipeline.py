"""The monitoring pipeline: compiled like the training pipeline, run under kfp.local, and on drift a training
run started through the CLI's own submit code.

The training run is submitted to a FAKE of the Kubeflow Pipelines API (tests/fake_kfp_api.py): the KFP backend
is the one boundary these tests cannot run. The real kfp client sends the requests; the tests assert on them.
The drift report itself runs for real on records written in the collected format (tests/test_monitoring.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kfp import compiler

from components.monitoring.drift import DRIFT, NO_DRIFT
from pipelines import catalog, remote
from pipelines.cli import main
from pipelines.local_run import DRIFT_TASK, RETRAIN_TASK, new_run_root, run_local
from pipelines.monitoring_pipeline import PIPELINES_ACCESS_LABEL, monitoring_pipeline
from pipelines.params import ParamError, parse_params
from pipelines.pipeline import PIPELINE_NAME
from pipelines.retrain import NAMESPACE_ENV, SA_TOKEN_PATH_ENV, param_text, training_arguments
from pipelines.run_folder import task_output
from tests.fake_kfp_api import API, FakeKfpApi
from tests.monitoring_data import MODEL, SINCE, UNTIL, records, serving_store, shifted, write_records
from tests.standin_pipeline import standin_pipeline

TOKEN, NAMESPACE = "pod-token-not-a-secret", "team-a"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKfpApi]:
    """The Pipelines API with version v1 of the training pipeline uploaded; the environment a pod of the
    monitoring run has in the cluster (the PodDefault's token file, the downward API's namespace)."""
    api = FakeKfpApi(token=TOKEN, allowed_namespaces={NAMESPACE})
    api.start()
    api.add_experiment("Default", NAMESPACE)
    package = tmp_path / "training.yaml"
    compiler.Compiler().compile(standin_pipeline, str(package))
    remote.upload(remote.connect(api.url, NAMESPACE, TOKEN), package, PIPELINE_NAME, "v1")
    (tmp_path / "token").write_text(TOKEN)
    monkeypatch.setenv(SA_TOKEN_PATH_ENV, str(tmp_path / "token"))
    monkeypatch.setenv(NAMESPACE_ENV, NAMESPACE)
    for name in (remote.ENDPOINT_ENV, remote.TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)
    yield api
    api.stop()


def run_monitoring(tmp_path: Path, store_uri: str, fake: FakeKfpApi, **params) -> Path:
    """The monitoring pipeline under kfp.local over the test window; returns its pipeline root."""
    run_root = new_run_root(tmp_path)
    arguments = {"store_uri": store_uri, "model_name": MODEL, "since": SINCE.isoformat(), "until": UNTIL.isoformat(),
                 "kfp_endpoint": fake.url, "training_version": "v1",
                 "retrain_params": {"data_uri": "https://acct.blob.core.windows.net/data/digits", "epochs": 3}, **params}
    run_local(run_root, arguments, monitoring_pipeline)
    return run_root


def verdict(run_root: Path) -> str:
    return task_output(run_root, DRIFT_TASK)["parameterValues"]["Output"]


def test_the_package_runs_the_training_step_only_behind_both_conditions_with_pipelines_access(tmp_path):
    spec, platform = yaml.safe_load_all(catalog.compile_to(catalog.MONITORING, tmp_path / "monitoring.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "digits-monitoring"
    outer = spec["root"]["dag"]["tasks"]["condition-1"]
    assert outer["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--drift-report-Output'] == 'drift'"
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]["condition-2"]
    assert inner["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--retrain_on_drift'] == true"
    assert set(spec["components"]["comp-condition-2"]["dag"]["tasks"]) == {RETRAIN_TASK}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    retrain = executors["exec-start-training"]
    assert retrain["podMetadata"]["labels"] == {PIPELINES_ACCESS_LABEL: "true", "azure.workload.identity/use": "true"}
    assert retrain["fieldPathAsEnv"] == [{"fieldPath": "metadata.namespace", "name": NAMESPACE_ENV}]
    assert executors["exec-drift-report"]["podMetadata"]["labels"] == {"azure.workload.identity/use": "true"}
    assert spec["root"]["inputDefinitions"]["parameters"]["code_version"]["defaultValue"]  # the commit, as for training


@pytest.mark.slow
def test_drift_starts_one_training_run_of_the_named_version_with_the_pods_token(pushed, held_out, fake, tmp_path):
    store = serving_store(pushed, str(tmp_path / "store"), tmp_path)
    write_records(store, records(*shifted(*held_out, "inverted")))
    run_root = run_monitoring(tmp_path, store.uri, fake, retrain_on_drift=True)

    assert verdict(run_root) == DRIFT
    (run,) = fake.calls("POST", f"{API}/runs")
    body = run.json()
    (version,) = fake.versions.values()
    assert body["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    assert body["runtime_config"]["parameters"] == {"data_uri": "https://acct.blob.core.windows.net/data/digits", "epochs": 3,
                                                    "store_uri": store.uri, "model_name": MODEL}
    assert body["display_name"].startswith(f"{PIPELINE_NAME} v1 retrain on drift ")
    assert run.headers["authorization"] == f"Bearer {TOKEN}"  # the token file the PodDefault mounts
    (run_id,) = fake.runs
    assert task_output(run_root, RETRAIN_TASK)["parameterValues"]["Output"] == run_id


@pytest.mark.slow
def test_no_training_run_without_drift_or_without_permission(pushed, held_out, fake, tmp_path):
    store = serving_store(pushed, str(tmp_path / "store"), tmp_path)
    write_records(store, records(*held_out))
    assert verdict(run_monitoring(tmp_path, store.uri, fake, retrain_on_drift=True)) == NO_DRIFT
    write_records(store, records(*shifted(*held_out, "inverted")), part="part-1")  # now drifted, but not allowed
    drifted = run_monitoring(tmp_path, store.uri, fake, retrain_on_drift=False)
    assert verdict(drifted) == DRIFT and task_output(drifted, RETRAIN_TASK) is None
    assert fake.calls("POST", f"{API}/runs") == []


@pytest.mark.slow
def test_a_version_that_is_not_uploaded_fails_the_step_with_one_line(pushed, held_out, fake, tmp_path, capfd):
    store = serving_store(pushed, str(tmp_path / "store"), tmp_path)
    write_records(store, records(*shifted(*held_out, "inverted")))
    with pytest.raises(RuntimeError):  # kfp.local: the step failed
        run_monitoring(tmp_path, store.uri, fake, retrain_on_drift=True, training_version="v9")
    assert fake.calls("POST", f"{API}/runs") == []
    assert f"ProjectError: expected version 'v9' of pipeline '{PIPELINE_NAME}' in namespace '{NAMESPACE}', found none" in "".join(capfd.readouterr())


def test_submit_uploads_the_training_pipeline_of_the_same_commit_and_names_it(fake, tmp_path, capsys):
    main(["submit", "--pipeline", "monitoring", "--host", fake.url, "--namespace", NAMESPACE, "--token-file",
          str(tmp_path / "token"), "--version-name", "c1", "--param", "store_uri=https://acct.blob.core.windows.net/models",
          "--param", "retrain_on_drift=true", "--param", 'retrain_params={"data_uri": "https://acct.blob.core.windows.net/d"}'])
    assert "Run run-" in capsys.readouterr().out  # exit code 0: main returns; a failure would raise SystemExit
    names = {p["display_name"] for p in fake.pipelines.values()}
    assert names == {PIPELINE_NAME, "digits-monitoring"}
    training = next(p["pipeline_id"] for p in fake.pipelines.values() if p["display_name"] == PIPELINE_NAME)
    uploaded = [v["display_name"] for v in fake.versions.values() if v["pipeline_id"] == training and v["display_name"] != "v1"]
    (run,) = fake.calls("POST", f"{API}/runs")
    parameters = run.json()["runtime_config"]["parameters"]
    assert uploaded == [parameters["training_version"]] and parameters["training_pipeline"] == PIPELINE_NAME
    assert parameters["retrain_on_drift"] is True


@pytest.mark.parametrize("params, message", [
    ({"retrain_params": {"store_uri": "/elsewhere"}}, "may not set 'store_uri'"),
    ({"retrain_params": {"epoch": 3}}, "unknown training pipeline parameter 'epoch'"),
    ({"retrain_params": {"epochs": "three"}}, "'epochs' expects an integer"),
    ({"retrain_params": {"epochs": 2.5}}, "'epochs' expects int"),
    ({"retrain_params": {"deployment_mode": "Sideways"}}, "deployment_mode"),
    ({"retrain_params": {}}, "must set data_uri"),
    ({"retrain_target": "cloud"}, "expected retrain_target in ('kfp', 'local')"),
    ({"since": "yesterday"}, "monitoring pipeline parameters"),
    ({"psi_threshold": -1.0}, "of 0 or more"),
])
def test_bad_monitoring_parameters_are_refused_before_any_step(params, message):
    with pytest.raises(ParamError, match=message.replace("(", r"\(").replace(")", r"\)")):
        catalog.check_params(catalog.MONITORING, {"store_uri": "/s", "retrain_on_drift": True, **params})


def test_training_arguments_take_the_monitoring_runs_store_and_model_and_convert_strings():
    signature = catalog.signature(catalog.TRAINING)
    arguments = training_arguments({"epochs": "4", "lr": 1, "train_bf16": "true"}, "/s", MODEL, signature)
    assert arguments == {"epochs": 4, "lr": 1.0, "train_bf16": True, "store_uri": "/s", "model_name": MODEL}
    # What the local training run is given as --param text parses back to the same values.
    pairs = [f"{name}={param_text(value)}" for name, value in arguments.items()]
    assert parse_params(pairs, signature) == arguments


def test_schedule_of_the_monitoring_pipeline_pins_the_training_version_it_will_start(fake, tmp_path, capsys):
    main(["schedule", "--pipeline", "monitoring", "--host", fake.url, "--namespace", NAMESPACE, "--token-file",
          str(tmp_path / "token"), "--name", "drift-nightly", "--cron", "0 0 3 * * *", "--version-name", "c1",
          "--param", "store_uri=https://acct.blob.core.windows.net/models"])
    assert "Recurring run 'drift-nightly' created" in capsys.readouterr().out
    (recurring,) = fake.recurring_runs.values()
    monitoring = next(v for v in fake.versions.values() if v["display_name"] == "c1")
    assert recurring["pipeline_version_reference"]["pipeline_version_id"] == monitoring["pipeline_version_id"]
    assert monitoring["pipeline_spec"]["pipelineInfo"]["name"] == "digits-monitoring"
    parameters = recurring["runtime_config"]["parameters"]
    training = [v["display_name"] for v in fake.versions.values() if v["display_name"] not in ("v1", "c1")]
    assert parameters == {"store_uri": "https://acct.blob.core.windows.net/models", "training_pipeline": PIPELINE_NAME,
                          "training_version": training[0]}
