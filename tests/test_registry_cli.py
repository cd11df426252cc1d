"""``registry list|show|history|promote|rollback`` through argparse and the real handlers."""

from __future__ import annotations

import argparse
import json
import signal
from datetime import timedelta
from pathlib import Path

import pytest

from components.errors import ConflictError
from components.modelfile import MANIFEST_FILE, WEIGHTS_FILE
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
    registry.promote(2, "test", force=True, reason="list test")
    code, out, err = run_cli(capsys, "list", "--store", store_uri, "--model", MODEL)
    assert (code, err) == (0, "")
    header, first, second = out.strip().splitlines()
    assert header.split() == ["VERSION", "ACCURACY", "VERDICT", "CREATED", "RUN", "ID", "GIT", "COMMIT", "DATASET", "HASH", "WEIGHTS"]
    assert first.split()[:3] == ["1", "0.9700", "accepted"] and "run-a" in first and "0123abc" in first
    assert first.split()[3] == registry.manifest(1)["created_at"]
    assert first.split()[-1] == registry.manifest(1)["files"][WEIGHTS_FILE]["sha256"][:12]
    assert second.split()[:4] == ["*", "2", "0.9812", "rejected"]
    assert "run-b" in second and "89abcdef0123" in second and "sha256:beef" in second


def test_an_unknown_model_name_is_an_error_that_lists_the_models_there(pushed: str, capsys: pytest.CaptureFixture[str]) -> None:
    Registry(open_store(pushed), "letters").push(model_folder(Path(pushed).parent / "src-l", "l"), push_metadata("l"))
    for command in ("list", "show", "history", "rollback", "gc"):
        code, out, err = run_cli(capsys, command, "--store", pushed, "--model", "digitz")
        assert (code, out) == (1, "") and err.count("\n") == 1
        assert err == (f"error: expected model 'digitz' in the registry at {open_store(pushed).uri}, found no such model; "
                       "the models there: digits, letters\n")


@pytest.mark.parametrize("where", ["empty folder", "missing folder", "another store"])
def test_a_store_without_a_registry_is_an_error_saying_so(where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    if where == "empty folder":
        store.mkdir()
    elif where == "another store":
        open_store(str(store)).write_bytes("prepared/abc/info.json", b"{}")  # data, but no models/
    code, out, err = run_cli(capsys, "list", "--store", str(store), "--model", MODEL)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"error: expected a model registry (models/NAME/...) in the store at {open_store(str(store)).uri}, found none: "
                          "the store holds no registry at all")


def test_a_model_whose_pushes_all_died_lists_no_complete_versions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = str(tmp_path / "store")
    assert run_in_child(push_then_die_before_manifest, uri, str(tmp_path)) == -signal.SIGKILL
    code, out, _ = run_cli(capsys, "list", "--store", uri, "--model", MODEL)
    assert code == 0 and out.startswith(f"no complete versions of {MODEL}") and "registry gc" in out


def test_show_summarizes_a_version_or_production_and_prints_the_whole_manifest_with_json(
    pushed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(open_store(pushed), MODEL)
    code, out, _ = run_cli(capsys, "show", "--store", pushed, "--model", MODEL, "--version", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{MODEL} version 2"
    fields = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:-1]}
    assert fields == {
        "production": "no (production: none)",
        "created": registry.manifest(2)["created_at"],
        "accuracy": "0.9812",
        "verdict": "rejected: below threshold",
        "weights": f"sha256 {registry.manifest(2)['files'][WEIGHTS_FILE]['sha256']}",
        "data": "sha256:beef (prefix not recorded)",
        "run": "run-b, code 89abcdef0123456789",
        "training": "-",
        "onnx": "not recorded (pushed before exports existed)",
        "profile": "-",  # pushed without one
    }
    assert lines[-1] == f"3 files verified against {MANIFEST_FILE} (its sha256: {registry.manifest_sha256(2)})"
    code, _, err = run_cli(capsys, "show", "--store", pushed, "--model", MODEL)
    assert code == 1 and err == f"error: expected --version N or a production version of {MODEL}, found neither (versions: [1, 2])\n"
    registry.promote(1, "test")
    code, out, _ = run_cli(capsys, "show", "--store", pushed, "--model", MODEL)
    assert code == 0 and out.startswith(f"{MODEL} version 1\n  production  yes\n")
    assert "training    epochs=2\n" in out
    code, out, err = run_cli(capsys, "show", "--store", pushed, "--model", MODEL, "--version", "1", "--json")
    assert code == 0 and json.loads(out) == registry.manifest(1) and err.startswith("3 files verified")


def test_show_of_a_pipeline_version_names_the_champion_it_was_compared_with(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = str(tmp_path / "store")
    registry = Registry(open_store(uri), MODEL)
    registry.push(model_folder(tmp_path, "a"), push_metadata("a"))
    registry.promote(1, "test")
    evaluation = {"candidate": {"accuracy": 0.9901}, "champion": {"accuracy": 0.9944}, "champion_version": 1,
                  "verdict": {"decision": "rejected", "reason": "worse than production"}}
    lineage = {"run_id": "run-2", "code_version": "c0ffee", "dataset_hash": "f" * 64, "dataset_prefix": "prepared/f",
               "training": {"store_uri": uri, "prefix": "runs/2/model", "arch": "small_cnn", "best_epoch": 3.0}}  # KFP's float
    registry.push(model_folder(tmp_path, "b"), {"metrics": evaluation, "verdict": evaluation["verdict"], "lineage": lineage})
    code, out, _ = run_cli(capsys, "show", "--store", uri, "--model", MODEL, "--version", "2")
    assert code == 0
    assert "  production  no (production: 1)\n" in out
    assert "  accuracy    0.9901 (production version 1 scored 0.9944 on the same split)\n" in out
    assert f"  data        {'f' * 64} (prepared/f)\n" in out
    assert "  training    arch=small_cnn, best_epoch=3\n" in out


def test_promote_moves_the_pointer_and_records_who_and_why(pushed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "promote", "--store", pushed, "--model", MODEL, "--version", "1",
                           "--reason", "manual fix", "--actor", "alice")
    assert code == 0 and "none -> 1  by alice  (manual fix)" in out
    registry = Registry(open_store(pushed), MODEL)
    assert registry.production().version == 1
    assert [(r["version"], r["by"], r["reason"], r["forced"]) for r in registry.history()] == [(1, "alice", "manual fix", False)]
    code, out, _ = run_cli(capsys, "history", "--store", pushed, "--model", MODEL)
    assert code == 0 and "promote   none -> 1  by alice  (manual fix)" in out
    (at,) = [r["at"] for r in registry.history()]
    assert out.splitlines()[-2:] == ["in production:", f"     v1  from {at}  until now"]


def test_promoting_a_version_the_gate_rejected_needs_force_and_a_reason_and_is_recorded_as_forced(
    pushed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(open_store(pushed), MODEL)
    code, out, err = run_cli(capsys, "promote", "--store", pushed, "--model", MODEL, "--version", "2")
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"error: refusing to promote {MODEL} version 2: expected a version the gate accepted, found "
                          "version 2 rejected (below threshold); nothing moved") and "--force with --reason TEXT" in err
    code, out, err = run_cli(capsys, "promote", "--store", pushed, "--model", MODEL, "--version", "2", "--force")
    assert (code, out) == (1, "") and err.startswith("error: expected --reason TEXT with --force")
    assert registry.production().version is None and registry.history() == []

    code, out, _ = run_cli(capsys, "promote", "--store", pushed, "--model", MODEL, "--version", "2", "--force",
                           "--reason", "hotfix: v1 crashes on RGB input", "--actor", "alice")
    assert code == 0 and "none -> 2  by alice  FORCED over the gate's rejection  (hotfix: v1 crashes on RGB input)" in out
    (record,) = registry.history()
    assert (record["version"], record["forced"], record["reason"]) == (2, True, "hotfix: v1 crashes on RGB input")
    assert "FORCED over the gate's rejection" in run_cli(capsys, "history", "--store", pushed, "--model", MODEL)[1]


def accepted_and_rejected(tmp_path: Path, promoted: tuple[int, ...] = ()) -> tuple[str, Registry]:
    """Versions 1 and 2 accepted, 3 rejected by the gate; ``promoted`` moved to production in that order."""
    uri = str(tmp_path / "store")
    registry = Registry(open_store(uri), MODEL)
    for tag in ("a", "b"):
        registry.push(model_folder(tmp_path, tag), push_metadata(tag))
    rejected = {**push_metadata("c"), "verdict": {"decision": "rejected", "reason": "accuracy 0.5600 is below the threshold 0.9500"}}
    registry.push(model_folder(tmp_path, "c"), rejected)
    for version in promoted:
        registry.promote(version, "pipeline")
    return uri, registry


def test_rollback_goes_to_the_production_version_before_the_current_one_and_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, registry = accepted_and_rejected(tmp_path, promoted=(1, 2))
    code, out, _ = run_cli(capsys, "rollback", "--store", uri, "--model", MODEL, "--reason", "bad canary")
    assert code == 0 and out.startswith(f"rolled {MODEL} back from version 2 to version 1, the version in production before it\n")
    assert "rollback  2 -> 1" in out and "(registry CLI)" in out
    assert registry.production().version == 1
    code, out, err = run_cli(capsys, "rollback", "--store", uri, "--model", MODEL)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "expected an earlier production version of digits to roll back to, found none" in err


def test_rollback_after_promote_rejected_then_promote_back_refuses_to_land_on_the_rejected_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The sequence: production 1 then 2, a forced promote of rejected 3, a promote of 1 to undo it.
    uri, registry = accepted_and_rejected(tmp_path, promoted=(1, 2))
    registry.promote(3, "alice", force=True, reason="try it")
    registry.promote(1, "alice", reason="3 is bad")
    code, out, err = run_cli(capsys, "rollback", "--store", uri, "--model", MODEL)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"error: refusing to roll {MODEL} back from version 1 to version 3 (in production before it): "
                          "expected a version the gate accepted, found version 3 rejected (accuracy 0.5600 is below")
    assert "registry promote --version N" in err and registry.production().version == 1
    code, out, _ = run_cli(capsys, "rollback", "--store", uri, "--model", MODEL, "--force", "--reason", "drill")
    assert code == 0 and out.startswith(f"rolled {MODEL} back from version 1 to version 3")
    assert registry.history()[-1]["forced"] is True
    code, out, _ = run_cli(capsys, "rollback", "--store", uri, "--model", MODEL)  # from 3 back to 2: accepted
    assert code == 0 and out.startswith(f"rolled {MODEL} back from version 3 to version 2")


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



def test_a_local_store_path_that_cannot_be_a_folder_is_one_error_line(tmp_path) -> None:
    """An OSError from a local store's folder (here: a file where a folder must be; permissions and a full disk
    take the same path) ends as one ``error:`` line naming the path, not a traceback."""
    import subprocess
    import sys

    (tmp_path / "afile").write_text("not a folder")
    target = tmp_path / "afile" / "store"
    done = subprocess.run([sys.executable, "-m", "pipelines", "data", "put", "--sample", "--to", str(target)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stderr.strip() == f"error: {target}: Not a directory"
