"""Each local run's folder, ``WORKDIR/runs/<run id>/`` (and ``WORKDIR/runs/latest``): the steps' logs and reports.

kfp.local leaves a step's reports as extension-less files under the run's pipeline root
(``…/train-model/report``), where a browser shows HTML as source text. After the run, every output whose
type the pipeline declares as KFP ``HTML`` or ``Markdown`` is copied here with its extension: the training
and evaluation pages as ``report.html`` and ``evaluation.html`` (the names they link to each other by), the
evaluation and data reports in Markdown as ``evaluation.md`` and ``data.md``, and any other such output as
``<step>-<output>.html|md``. The types come from the compiled pipeline spec, so a report output added to a
step is collected without a change here.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.errors import ProjectError
from components.training.report import EVALUATION_PAGE, TRAINING_PAGE

RUNS = "runs"
LATEST = "latest"
LOGS = "logs"
EXECUTOR_OUTPUT = "executor_output.json"  # where kfp.local writes a task's outputs (parameters, artifact URIs)
EXTENSIONS = {"system.HTML": ".html", "system.Markdown": ".md"}  # KFP artifact types a person opens
# (task, output) -> file name, in the order the summary lists them: the pages under the names they link to
# each other by, the Markdown reports under names that say what they are. Others: <step>-<output>.<extension>.
REPORT_NAMES = {("train-model", "report"): TRAINING_PAGE, ("evaluate-model", "report_html"): EVALUATION_PAGE,
                ("evaluate-model", "report"): "evaluation.md", ("prepare-data", "report"): "data.md",
                ("drift-report", "report_html"): "drift.html", ("drift-report", "report"): "drift.md"}


def new_run_folder(workdir: Path, run_id: str) -> Path:
    """Create ``workdir/runs/run_id`` (with its ``logs/``) and point ``workdir/runs/latest`` at it."""
    runs = workdir.resolve() / RUNS
    folder = runs / run_id
    (folder / LOGS).mkdir(parents=True)
    link = runs / f".{LATEST}-{run_id}"
    link.symlink_to(run_id)  # relative: the link still works when the work dir moves
    os.replace(link, runs / LATEST)  # atomic: a concurrent run finds either the old or the new run
    return folder


def task_output(run_root: Path, task: str) -> dict[str, Any] | None:
    """The ``executor_output.json`` the task ``task`` left under ``run_root``, or ``None`` if it did not run."""
    outputs = sorted(run_root.glob(f"*/{task}/{EXECUTOR_OUTPUT}"))
    if len(outputs) > 1:
        raise ProjectError(f"expected one {task} output under {run_root}, found {len(outputs)}: {outputs}")
    if not outputs:
        return None
    try:
        return json.loads(outputs[0].read_text())
    except json.JSONDecodeError as exc:
        raise ProjectError(f"expected JSON in {outputs[0]}: {exc}") from None


def report_outputs(pipeline_spec: Any) -> Iterator[tuple[str, str, str]]:
    """``(task, output, extension)`` of every HTML or Markdown output in a compiled ``PipelineSpec``,
    including the tasks inside conditions (kfp.local names tasks by their key in the DAG that holds them)."""
    components = pipeline_spec.components
    dags = [pipeline_spec.root.dag]
    while dags:
        for task, spec in dags.pop().tasks.items():
            component = components[spec.component_ref.name]
            if component.WhichOneof("implementation") == "dag":
                dags.append(component.dag)
                continue
            for output, definition in component.output_definitions.artifacts.items():
                if definition.artifact_type.schema_title in EXTENSIONS:
                    yield task, output, EXTENSIONS[definition.artifact_type.schema_title]


def collect_reports(run_root: Path, folder: Path, pipeline_spec: Any) -> list[Path]:
    """Copy the run's reports (of the steps that ran) into ``folder`` with their extensions; return their paths,
    the named ones first (:data:`REPORT_NAMES`)."""
    order = list(REPORT_NAMES)
    copied = []
    for task, output, extension in sorted(report_outputs(pipeline_spec), key=lambda r: (_rank(order, r[:2]), r)):
        source = _artifact_path(task_output(run_root, task), output)
        if source is None or not source.is_file():
            continue  # the step did not run (a failed run, a rejected candidate) or did not write it
        target = folder / REPORT_NAMES.get((task, output), f"{task}-{output}{extension}")
        shutil.copyfile(source, target)
        copied.append(target)
    return copied


def _rank(order: list[tuple[str, str]], report: tuple[str, str]) -> int:
    return order.index(report) if report in order else len(order)


def _artifact_path(output: dict[str, Any] | None, name: str) -> Path | None:
    artifacts = (output or {}).get("artifacts", {}).get(name, {}).get("artifacts") or []
    return Path(artifacts[0]["uri"]) if artifacts else None  # kfp.local's artifact URIs are local paths
