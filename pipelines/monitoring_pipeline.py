"""The monitoring pipeline: drift report → (if drift and allowed) a training run. Wiring only."""

# No `from __future__ import annotations` here: kfp reads the parameter annotations as real types.

from kfp import dsl, kubernetes

from components.cluster import WORKLOAD_IDENTITY_LABEL
from components.monitoring.component import drift_report, start_training
from components.monitoring.drift import DRIFT
from pipelines.pipeline import PIPELINE_NAME

MONITORING_PIPELINE_NAME = "digits-monitoring"
# The profile's PodDefault mounts a Kubeflow Pipelines token into pods with this label (see pipelines.retrain).
PIPELINES_ACCESS_LABEL = "access-ml-pipeline"


@dsl.pipeline(name=MONITORING_PIPELINE_NAME)
def monitoring_pipeline(
    store_uri: str,
    model_name: str = "digits",
    collect_uri: str = "",
    since: str = "24h",
    until: str = "",
    psi_threshold: float = 0.2,
    class_psi_threshold: float = 0.2,
    min_records: int = 100,
    retrain_on_drift: bool = False,
    retrain_target: str = "kfp",
    retrain_params: dict = {},  # noqa: B006 - a KFP default value, never mutated
    training_pipeline: str = PIPELINE_NAME,
    training_version: str = "",
    experiment: str = "Default",
    kfp_endpoint: str = "",
    local_workdir: str = "",
    code_version: str = "",
):
    """Compare what the model server collected with the production version's training data; retrain on drift.

    Args:
        store_uri: Store holding the model registry (a local path or an Azure Blob URI).
        model_name: Registry name of the model; its production version is judged.
        collect_uri: Store holding the collected requests (the serving collect_uri); empty: store_uri.
        since: Window start: ISO 8601 (UTC if no zone) or a duration before until (30m, 24h, 7d).
        until: Window end (excluded): ISO 8601 or a duration before now; empty: now.
        psi_threshold: Drift when an input statistic's population stability index is above this.
        class_psi_threshold: Drift when the predicted classes' PSI against the training labels is above this.
        min_records: Fewer records in the window: "not enough data" (no verdict, no training run).
        retrain_on_drift: On drift, start a training run (off: only the report).
        retrain_target: Where the training run goes: kfp (a run of the uploaded training pipeline on this Kubeflow) or local (python -m pipelines run --local).
        retrain_params: The training run's pipeline arguments as a JSON object, e.g. {"data_uri": "https://ACCOUNT.blob.core.windows.net/data/photos", "epochs": 15}; store_uri and model_name are this run's.
        training_pipeline: Name of the uploaded training pipeline (retrain_target kfp).
        training_version: Version of it to run (retrain_target kfp; submit and schedule --pipeline monitoring upload the training pipeline of the same commit and fill this in).
        experiment: Experiment of the training run (retrain_target kfp).
        kfp_endpoint: The Pipelines API; empty: the in-cluster address.
        local_workdir: Work dir of a local training run (filled in by run --local).
        code_version: Git commit of the code (filled in by the CLI).
    """
    report = drift_report(store_uri=store_uri, collect_uri=collect_uri, model_name=model_name, since=since, until=until,
                          psi_threshold=psi_threshold, class_psi_threshold=class_psi_threshold, min_records=min_records)
    report.set_display_name("drift report").set_caching_options(False)  # the window moves with every run
    tasks = [report]
    with dsl.If(report.outputs["Output"] == DRIFT, name="drift-found"):
        with dsl.If(retrain_on_drift == True, name="retraining-allowed"):  # noqa: E712 - a KFP condition, not a Python test
            retrain = start_training(target=retrain_target, retrain_params=retrain_params, store_uri=store_uri,
                                     model_name=model_name, training_pipeline=training_pipeline,
                                     training_version=training_version, experiment=experiment,
                                     kfp_endpoint=kfp_endpoint, local_workdir=local_workdir)
            retrain.set_display_name("start a training run").set_caching_options(False)
            kubernetes.add_pod_label(retrain, PIPELINES_ACCESS_LABEL, "true")
            kubernetes.use_field_path_as_env(retrain, "POD_NAMESPACE", "metadata.namespace")
            tasks.append(retrain)
    for task in tasks:
        kubernetes.add_pod_label(task, WORKLOAD_IDENTITY_LABEL, "true")  # Blob access with the pod's Azure identity
