"""After concurrent runs, each run's summary names the version that run pushed (read from its own push
step's output), not the registry's newest; each run keeps its kfp.local outputs in a folder of its own; the
summary ends with the paths of the run's reports."""

from __future__ import annotations

import json
from pathlib import Path

from components.registry import Registry
from components.store import open_store
from pipelines.local_run import format_summary, new_run_root, pushed_version, summarize
from tests.test_registry import MODEL, model_folder


def push_run(registry: Registry, root: Path, tag: str, accuracy: float) -> int:
    metadata = {"metrics": {"candidate": {"accuracy": accuracy}}, "lineage": {"run_id": f"run-{tag}"},
                "verdict": {"decision": "rejected", "reason": f"{tag} below the threshold"}}
    return registry.push(model_folder(root, tag), metadata)


def record_push_output(run_root: Path, version: int) -> None:
    """What kfp.local leaves for the push step: ROOT/<pipeline run>/push-model/executor_output.json."""
    task = run_root / "digits-ps-classifier-2026-01-01-00-00-00-000000" / "push-model"
    task.mkdir(parents=True)
    (task / "executor_output.json").write_text(json.dumps({"parameterValues": {"version": version, "model_uri": "x"}}))


def test_each_run_summary_names_the_version_it_pushed_not_the_newest(store_uri: str, tmp_path: Path) -> None:
    store = open_store(store_uri)
    registry = Registry(store, MODEL)
    mine = push_run(registry, tmp_path / "src", "mine", 0.5)
    push_run(registry, tmp_path / "src", "theirs", 0.7)  # a concurrent run pushed after this one
    run_root = new_run_root(tmp_path)
    record_push_output(run_root, mine)
    assert pushed_version(run_root) == mine
    summary = summarize(store, tmp_path, {"local_state_dir": str(tmp_path / "serving")}, MODEL, pushed_version(run_root))
    assert (summary.version, summary.accuracy, summary.reason) == (mine, 0.5, "mine below the threshold")


def test_every_run_gets_its_own_kfp_root(tmp_path: Path) -> None:
    first, second = new_run_root(tmp_path), new_run_root(tmp_path)
    assert first != second and first.parent == second.parent == tmp_path.resolve() / "kfp-root"


def test_a_run_whose_push_step_left_no_output_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    from components.errors import ProjectError

    with pytest.raises(ProjectError, match="push-model"):
        pushed_version(new_run_root(tmp_path))


def test_the_summary_ends_with_the_runs_reports(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    version = push_run(registry, tmp_path / "src", "mine", 0.5)
    reports = [tmp_path / "runs" / "r1" / name for name in ("report.html", "data.md", "evaluation.md")]
    summary = summarize(open_store(store_uri), tmp_path, {"local_state_dir": str(tmp_path / "serving")}, MODEL, version, reports)
    lines = format_summary(summary, tmp_path).splitlines()
    assert lines[lines.index(f"registry version   {MODEL} v{version} (rejected: mine below the threshold)") + 1:] == [
        f"{'':<19}pipeline run run-mine (the run id in the reports and in the version's lineage)",
        "endpoint           not deployed (the gate rejected the candidate)",
        f"reports            {tmp_path}/runs/r1/report.html",
        f"                   {tmp_path}/runs/r1/data.md",
        f"                   {tmp_path}/runs/r1/evaluation.md",
        "=" * 72,
    ]


def test_a_rerun_with_productions_weights_says_so_in_the_summary(store_uri: str, tmp_path: Path) -> None:
    """Same weights as production (a rerun on the same data and seed): the summary names production's version
    instead of claiming a deployment that the deploy step rightly skipped."""
    store = open_store(store_uri)
    registry = Registry(store, MODEL)
    metadata = {"metrics": {"candidate": {"accuracy": 0.97}}, "lineage": {"run_id": "run-a"},
                "verdict": {"decision": "accepted", "reason": "0.97 meets the threshold"}}
    first = registry.push(model_folder(tmp_path / "a", "same"), metadata)
    registry.promote(first, actor="test")
    rerun = registry.push(model_folder(tmp_path / "b", "same"), {**metadata, "lineage": {"run_id": "run-b"}})
    summary = summarize(store, tmp_path, {"local_state_dir": str(tmp_path / "serving")}, MODEL, rerun)
    assert (summary.version, summary.identical_to) == (rerun, first)
    lines = format_summary(summary, tmp_path).splitlines()
    assert f"{'':<19}identical to production v{first} (the same weights): not deployed again" in lines
