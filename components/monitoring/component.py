"""KFP components of the monitoring pipeline: the drift report, and a training run started when it finds drift."""

from kfp.dsl import HTML, Markdown, Metrics, Output

from components.kfp_base import project_component


@project_component
def drift_report(store_uri: str, collect_uri: str, model_name: str, since: str, until: str, psi_threshold: float,
                 class_psi_threshold: float, min_records: int, metrics: Output[Metrics], report: Output[Markdown],
                 report_html: Output[HTML]) -> str:
    """Compare the collected requests of a window with the training split of the version in production.

    Returns the verdict: "drift", "no drift" or "not enough data" (the reason is in the reports and the log).

    Args:
        store_uri: Store URI holding the registry.
        collect_uri: Store URI holding the collected records (collected/MODEL/...); "" for store_uri.
        model_name: Registry name; its production version is the one judged.
        since: Window start: ISO 8601 (UTC if no zone) or a duration before until (30m, 24h, 7d).
        until: Window end (excluded): ISO 8601 or a duration before now; "" for now.
        psi_threshold: Drift when an input statistic's PSI is above this (0.2: a significant shift).
        class_psi_threshold: Drift when the predicted classes' PSI against the training labels is above this.
        min_records: Fewer records of the production version in the window: "not enough data".
        metrics: Every PSI, the record count, confidence quantiles and drift (1) or not (0).
        report: The verdict and the scores (text and tables).
        report_html: The same with training and served distributions drawn side by side.
    """
    from components.monitoring.drift import Thresholds, drift_report, window
    from components.monitoring.report import headline, html_report, markdown_report
    from components.store import open_store

    start, end = window(since or None, until or None)
    store = open_store(store_uri)
    collected = open_store(collect_uri) if collect_uri else store
    result = drift_report(store, model_name, start, end, Thresholds(psi_threshold, class_psi_threshold, min_records), collected)
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)
    with open(report.path, "w") as f:
        f.write(markdown_report(result))
    with open(report_html.path, "w") as f:
        f.write(html_report(result))
    print(headline(result))
    return result.verdict


@project_component
def start_training(target: str, retrain_params: dict, store_uri: str, model_name: str, training_pipeline: str,
                   training_version: str, experiment: str, kfp_endpoint: str, local_workdir: str) -> str:
    """Start a training run of the model because its inputs drifted; returns the KFP run id (local: "local vN",
    the version the run registered).

    Args:
        target: kfp (a run of the uploaded training pipeline, started with the pod's Pipelines token) or
            local (python -m pipelines run --local in local_workdir).
        retrain_params: The training run's pipeline arguments (store_uri and model_name are this run's).
        store_uri: The registry being watched; the training run registers into it.
        model_name: The model whose inputs drifted.
        training_pipeline: Name of the uploaded training pipeline (target kfp).
        training_version: Its version to run (target kfp).
        experiment: Experiment of the training run (target kfp).
        kfp_endpoint: The Pipelines API ("" for the in-cluster address).
        local_workdir: Work dir of the local run (target local).
    """
    from pipelines.retrain import start_training_in_child

    return start_training_in_child(target=target, retrain_params=retrain_params, store_uri=store_uri, model_name=model_name,
                                   training_pipeline=training_pipeline, training_version=training_version,
                                   experiment=experiment, kfp_endpoint=kfp_endpoint, local_workdir=local_workdir)
