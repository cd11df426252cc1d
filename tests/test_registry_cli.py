"""``registry list|show|history|promote|rollback`` through argparse and the real handlers."""

from __future__ import annotations

import argparse
import json
import signal
from datetime import timedelta
from pathlib import Path

import pytest

from components.errors import ConflictError
from components.modelfile import MANIFEST_FILE
from components.registry import Registry
from components.store import open_store
from pipelines.registry_cli import add_registry_commands, cmd_list, main
from tests.test_registry import (
    MODEL,
    model_folder,
    push_metadata,
    push_tagged,
    push_then_die_before_manifest,
    run_in_child,
    tag_of,
)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the registry CLI; return its exit code, stdout and stderr."""
    code = main(["registry", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pushed(tmp_path: Path) -> str:
    """A local registry with two versions: one in this project's manifest shape, one in the pipeline's."""
    uri = str(tmp_path / "store")
    push_two(uri, tmp_path / "src")
    return uri


def push_two(uri: str, root: Path) -> Registry:
    registry = Registry(open_store(uri), MODEL)
    registry.push(model_folder(root, "a"), push_metadata("a"))
    pipeline_shape = {  # what push_model records: the evaluation result, and the commit as code_version
        "metrics": {"candidate": {"accuracy": 0.9812}, "champion": None},
        "verdict": {"decision": "rejected", "reason": "below threshold"},
        "lineage": {"run_id": "run-b", "code_version": "89abcdef0123456789", "dataset_hash": "sha256:beef"},
    }
    registry.push(model_folder(root, "b"), pipeline_shape)
    return registry


def test_list_shows_each_version_with_metrics_verdict_time_and_lineage_and_marks_production(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = push_two(store_uri, tmp_path / "src")
    registry.promote(2, "test")
    code, out, err = run_cli(capsys, "list", "--store", store_uri, "--model", MODEL)
    assert (code, err) == (0, "")
    header, first, second = out.strip().splitlines()
    assert header.split() == ["VERSION", "ACCURACY", "VERDICT", "CREATED", "RUN", "ID", "GIT", "COMMIT", "DATASET", "HASH"]
    assert first.split()[:3] == ["1", "0.9700", "accepted"] and "run-a" in first and "0123abc" in first
    assert first.split()[3] == registry.manifest(1)["created_at"]
    assert second.split()[:4] == ["*", "2", "0.9812", "rejected"]
    assert "run-b" in second and "89abcdef0123" in second and "sha256:beef" in second


def test_list_of_an_empty_registry_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list", "--store", str(tmp_path), "--model", MODEL)
    assert code == 0 and out.startswith(f"no versions of {MODEL}")


def test_show_prints_the_manifest_of_a_version_or_of_production(pushed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "show", "--store", pushed, "--model", MODEL, "--version", "1")
    assert code == 0 and json.loads(out)["lineage"]["run_id"] == "run-a"
    code, _, err = run_cli(capsys, "show", "--store", pushed, "--model", MODEL)
    assert code == 1 and err == f"error: expected --version N or a production version of {MODEL}, found neither (versions: [1, 2])\n"
    Registry(open_store(pushed), MODEL).promote(2, "test")
    code, out, _ = run_cli(capsys, "show", "--store", pushed, "--model", MODEL)
    assert code == 0 and json.loads(out)["version"] == 2


def test_promote_moves_the_pointer_and_records_who_and_why(pushed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "promote", "--store", pushed, "--model", MODEL, "--version", "2",
                           "--reason", "manual fix", "--actor", "alice")
    assert code == 0 and "none -> 2  by alice  (manual fix)" in out
    registry = Registry(open_store(pushed), MODEL)
    assert registry.production().version == 2
    assert [(r["version"], r["by"], r["reason"]) for r in registry.history()] == [(2, "alice", "manual fix")]
    code, out, _ = run_cli(capsys, "history", "--store", pushed, "--model", MODEL)
    assert code == 0 and "promote   none -> 2  by alice  (manual fix)" in out


def test_rollback_returns_to_the_previous_production_version_then_refuses(pushed: str, capsys: pytest.CaptureFixture[str]) -> None:
    for version in ("1", "2"):
        assert run_cli(capsys, "promote", "--store", pushed, "--model", MODEL, "--version", version)[0] == 0
    code, out, _ = run_cli(capsys, "rollback", "--store", pushed, "--model", MODEL, "--reason", "bad canary")
    assert code == 0 and "rollback  2 -> 1" in out and "(registry CLI)" in out
    assert Registry(open_store(pushed), MODEL).production().version == 1
    code, out, err = run_cli(capsys, "rollback", "--store", pushed, "--model", MODEL)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "expected an earlier production version of digits to roll back to, found none" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["promote", "--version", "9"], "digits has no complete version 9 (no MANIFEST.json); versions: [1, 2]"),
        (["show", "--version", "7"], "digits has no complete version 7"),
    ],
)
def test_failures_exit_non_zero_with_a_one_line_reason(pushed: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, *argv, "--store", pushed, "--model", MODEL)
    assert code == 1 and out == "" and err.count("\n") == 1 and message in err


def test_a_bad_store_uri_exits_non_zero_saying_what_was_expected(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "list", "--store", "ftp://host/x", "--model", MODEL)
    assert code == 1 and err.startswith("error: expected a local path, file:///path or https://") and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["list", "--store", "x", "--model", "Bad_Name"], "expected a model name of lowercase letters"),
    (["promote", "--store", "x", "--model", MODEL, "--version", "zero"], "expected a version number"),
    (["promote", "--store", "x", "--model", MODEL], "the following arguments are required: --version"),
    (["gc", "--store", "x", "--model", MODEL, "--older-than-hours", "-1"], "expected a number of hours (0 or more), got '-1'"),
    (["gc", "--store", "x", "--model", MODEL, "--older-than-hours", "inf"], "expected a number of hours (0 or more), got 'inf'"),
    (["gc", "--store", "x", "--model", MODEL, "--older-than-hours", "soon"], "expected a number of hours (0 or more), got 'soon'"),
])
def test_malformed_arguments_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["registry", *argv])
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_add_registry_commands_plugs_into_a_larger_cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("compile")
    add_registry_commands(sub)
    args = parser.parse_args(["registry", "list", "--store", "s", "--model", MODEL])
    assert (args.command, args.registry_command, args.func) == ("registry", "list", cmd_list)


# -- gc: pushes killed before their manifest ---------------------------------------------------------------


def killed_push(uri: str, root: Path) -> Registry:
    """Version 1 complete; version 2 claimed, files uploaded, then the pushing process SIGKILLed."""
    push_tagged(uri, str(root), "complete")
    assert run_in_child(push_then_die_before_manifest, uri, str(root)) == -signal.SIGKILL
    return Registry(open_store(uri), MODEL)


def test_gc_deletes_what_a_killed_push_left_keeps_its_number_and_touches_nothing_else(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = killed_push(store_uri, tmp_path)
    left = registry.store.list(registry.version_prefix(2))
    assert len(left) > 1  # the claim and the model files

    code, out, err = run_cli(capsys, "gc", "--store", store_uri, "--model", MODEL, "--older-than-hours", "0")

    assert (code, err) == (0, "")
    assert out.startswith("version 2 (claimed ") and out.rstrip().endswith(f"no manifest): deleted {len(left) - 1} files")
    assert registry.store.list(registry.version_prefix(2)) == [f"{registry.version_prefix(2)}/CLAIM.json"]
    assert tag_of(registry, 1, tmp_path / "check") == "complete"
    assert push_tagged(store_uri, str(tmp_path / "next"), "after")[1] == 3  # number 2 is never given out again
    assert run_cli(capsys, "gc", "--store", store_uri, "--model", MODEL, "--older-than-hours", "0")[1].startswith("no abandoned pushes")


def test_gc_leaves_a_claim_younger_than_the_limit_and_a_dry_run_deletes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = str(tmp_path / "store")
    registry = killed_push(uri, tmp_path)
    left = registry.store.list(registry.version_prefix(2))

    code, out, _ = run_cli(capsys, "gc", "--store", uri, "--model", MODEL)
    assert code == 0 and out == f"no abandoned pushes of {MODEL} older than 24 hours\n"
    code, out, _ = run_cli(capsys, "gc", "--store", uri, "--model", MODEL, "--older-than-hours", "0", "--dry-run")
    assert code == 0 and f"would delete {len(left) - 1} files" in out
    assert registry.store.list(registry.version_prefix(2)) == left


def test_a_push_that_completes_after_being_found_abandoned_is_not_deleted(tmp_path: Path) -> None:
    registry = killed_push(str(tmp_path / "store"), tmp_path)
    (push,) = registry.abandoned(timedelta(0))
    registry.store.create_exclusive(f"{registry.version_prefix(2)}/{MANIFEST_FILE}", b"{}")  # the late writer finishes

    with pytest.raises(ConflictError, match="version 2 has a manifest now"):
        registry.clear_abandoned(push)
    assert all(registry.store.exists(key) for key in push.files)
