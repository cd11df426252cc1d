"""Each local run's folder: a ``latest`` link, and the HTML/Markdown reports the steps wrote, with extensions,
found by the artifact types the compiled pipeline declares.

No ``from __future__ import annotations`` here: kfp reads the stand-in components' annotations as real types.
"""

import json
from pathlib import Path

from kfp import dsl
from kfp.dsl import HTML, Markdown, Output

from components.training.report import EVALUATION_PAGE, TRAINING_PAGE
from pipelines.monitoring_pipeline import monitoring_pipeline
from pipelines.pipeline import training_pipeline
from pipelines.run_folder import LATEST, REPORT_NAMES, collect_reports, new_run_folder, report_outputs


def record_task(run_root: Path, task: str, **files: str) -> None:
    """What kfp.local leaves for a task: its artifacts as files, and executor_output.json naming their URIs."""
    folder = run_root / "digits-ps-classifier-2026-01-01-00-00-00-000000" / task
    folder.mkdir(parents=True)
    artifacts = {}
    for name, text in files.items():
        (folder / name).write_text(text)
        artifacts[name] = {"artifacts": [{"name": name, "uri": str(folder / name), "metadata": {}}]}
    (folder / "executor_output.json").write_text(json.dumps({"artifacts": artifacts}))


def test_each_run_gets_a_folder_and_latest_points_at_the_newest(tmp_path: Path) -> None:
    first = new_run_folder(tmp_path, "20260101T000000Z-aaaaaaaa")
    second = new_run_folder(tmp_path, "20260101T000001Z-bbbbbbbb")
    latest = tmp_path / "runs" / LATEST
    assert (first / "logs").is_dir() and (second / "logs").is_dir()
    assert latest.is_symlink() and latest.resolve() == second.resolve()
    assert not latest.readlink().is_absolute()  # the work dir can move


def test_the_pipelines_reports_are_found_by_their_declared_types() -> None:
    found = set(report_outputs(training_pipeline.pipeline_spec))
    assert found >= {("prepare-data", "report", ".md"), ("train-model", "report", ".html"), ("evaluate-model", "report", ".md")}
    found |= set(report_outputs(monitoring_pipeline.pipeline_spec))
    assert {("drift-report", "report", ".md"), ("drift-report", "report_html", ".html")} <= found
    # Every name given to a report is given to an output one of the pipelines has, with the extension of its type.
    assert {(task, output, Path(name).suffix) for (task, output), name in REPORT_NAMES.items()} <= found


def test_reports_are_copied_with_extensions_under_the_names_they_link_to_each_other_by(tmp_path: Path) -> None:
    run_root, folder = tmp_path / "kfp-root" / "run", new_run_folder(tmp_path, "run")
    record_task(run_root, "train-model", report="<html><body>curves</body></html>", model="x")
    record_task(run_root, "evaluate-model", report="# Evaluation\n", report_html="<p>confusion</p>", evaluation="{}")
    copied = collect_reports(run_root, folder, training_pipeline.pipeline_spec)  # prepare-data left nothing
    assert [p.name for p in copied] == [TRAINING_PAGE, EVALUATION_PAGE, "evaluation.md"]  # the pages first
    assert (folder / "report.html").read_text() == "<html><body>curves</body></html>"
    assert (folder / "evaluation.html").read_text() == "<p>confusion</p>"
    assert (tmp_path / "runs" / "latest" / "evaluation.md").read_text() == "# Evaluation\n"


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def judge(page: Output[HTML], notes: Output[Markdown]) -> str:
    """A step with an HTML and a Markdown output (a stand-in for a report a step gains later)."""
    return "accepted"


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def publish(summary: Output[HTML]):
    """A step inside a condition."""


@dsl.pipeline(name="report-standin")
def report_standin() -> None:
    judged = judge()
    with dsl.If(judged.outputs["Output"] == "accepted"):
        publish()


def test_a_report_output_added_to_any_step_is_collected_without_a_change_here(tmp_path: Path) -> None:
    assert sorted(report_outputs(report_standin.pipeline_spec)) == [
        ("judge", "notes", ".md"), ("judge", "page", ".html"), ("publish", "summary", ".html")]
    run_root, folder = tmp_path / "kfp-root" / "run", new_run_folder(tmp_path, "run")
    record_task(run_root, "judge", page="<p>judged</p>", notes="judged")
    record_task(run_root, "publish", summary="<p>published</p>")
    copied = collect_reports(run_root, folder, report_standin.pipeline_spec)
    assert [p.name for p in copied] == ["judge-notes.md", "judge-page.html", "publish-summary.html"]
    assert (folder / "publish-summary.html").read_text() == "<p>published</p>"
