"""KFP component: evaluate_model."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.kfp_base import project_component


@project_component
def evaluate_model(dataset: Input[Dataset], model: Input[Model], store_uri: str, model_name: str,
                   accuracy_threshold: float, tolerance: float, run_id: str, code_version: str,
                   metrics: Output[Metrics], confusion: Output[ClassificationMetrics], report: Output[Markdown],
                   report_html: Output[HTML], evaluation: Output[Artifact]) -> str:
    """Score the candidate on the test split against the threshold and the production model (champion).

    Only like is compared with like: a candidate of fewer than two classes, or whose class names, input
    shape or preprocessing differ from production's, is rejected with the reason. The evaluation records
    the champion's version; the deploy step promotes only while production is still that version.

    Returns the gate's decision, "accepted" or "rejected"; the reason is in the report and the log.

    Args:
        dataset: The prepared data set (its test split is used).
        model: The candidate model.
        store_uri: Store URI holding the registry.
        model_name: Registry name; its production version is the champion.
        accuracy_threshold: Minimum test accuracy to accept the candidate.
        tolerance: How much worse than the champion the candidate may be and still be accepted.
        run_id: Pipeline run id, shown in the reports.
        code_version: Git commit of the code, shown in the reports.
        metrics: Accuracy, its 95% interval and the champion's accuracy.
        confusion: Confusion matrix of the candidate.
        report: Candidate and champion side by side, with the run's provenance (text and tables).
        report_html: The same page with the confusion matrix and misclassified test images as pictures.
        evaluation: The full evaluation (JSON) for the push step.
    """
    import json

    from components.evaluation.report import RunInfo, html_report, markdown_report
    from components.evaluation.step import run_evaluation
    from components.store import open_store

    result = run_evaluation(open_store(store_uri), dataset.metadata["prefix"], model.metadata["prefix"], model_name, accuracy_threshold, tolerance)
    metrics.log_metric("accuracy", result.candidate.accuracy)
    metrics.log_metric("accuracy_low95", round(result.candidate.interval[0], 6))
    metrics.log_metric("accuracy_high95", round(result.candidate.interval[1], 6))
    if result.champion:
        metrics.log_metric("champion_accuracy", result.champion.accuracy)
    confusion.log_confusion_matrix(result.candidate.class_names, result.candidate.confusion)
    run = RunInfo.now(run_id, code_version)
    with open(report.path, "w") as f:
        f.write(markdown_report(result, run))
    with open(report_html.path, "w") as f:
        f.write(html_report(result, run))
    with open(evaluation.path, "w") as f:
        json.dump(result.to_dict(), f)
    print(f"gate: {result.verdict.decision}: {result.verdict.reason}")
    return result.verdict.decision
