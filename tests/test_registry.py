"""The model registry on both backends: immutable numbered versions, a compare-and-swap production pointer,
an audit history, and hash-checked downloads, under concurrency and crashes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

from components.blob_store import CONNECTION_STRING_ENV, BlobStore
from components.errors import ConflictError, ModelFormatError, RegistryError, StoreError
from components.modelfile import CARD_FILE, MANIFEST_FILE, METRICS_FILE, WEIGHTS_FILE, verify_manifest
from components.registry import Registry, materialize, production_stack
from components.store import Store, open_store
from tests.azurite import Azurite
from tests.helpers import run_together

MODEL = "digits"
FORK = multiprocessing.get_context("fork")  # children inherit the imported modules: no second torch import


def model_folder(root: Path, tag: str) -> Path:
    """A version folder whose every file says which pusher wrote it."""
    folder = root / tag
    folder.mkdir(parents=True)
    (folder / WEIGHTS_FILE).write_bytes(tag.encode() * 4096)
    (folder / CARD_FILE).write_text(json.dumps({"tag": tag}))
    (folder / METRICS_FILE).write_text(json.dumps({"accuracy": 0.97, "tag": tag}))
    return folder


def push_metadata(tag: str) -> dict[str, Any]:
    return {
        "metrics": {"accuracy": 0.97},
        "verdict": {"decision": "accepted", "reason": "0.970 >= threshold 0.900"},
        "lineage": {"run_id": f"run-{tag}", "git_commit": "0123abc", "dataset_hash": "sha256:feed", "parameters": {"epochs": 2}},
    }


def push_tagged(uri: str, root: str, tag: str) -> tuple[str, int]:
    """Push a folder tagged ``tag`` into the registry at ``uri`` (runs in threads and child processes)."""
    registry = Registry(open_store(uri), MODEL)
    return tag, registry.push(model_folder(Path(root), tag), push_metadata(tag))


def tag_of(registry: Registry, version: int, scratch: Path) -> str:
    """Download ``version`` (hashes checked) and return the tag its files carry."""
    registry.download(version, scratch / f"v{version}")
    return json.loads((scratch / f"v{version}" / CARD_FILE).read_text())["tag"]


class DiesBefore:
    """A store whose process is killed just before it writes a key containing ``marker``: a crash at that point."""

    def __init__(self, inner: Store, marker: str):
        self.inner, self.marker = inner, marker

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        if self.marker in key:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.create_exclusive(key, data)


def push_then_die_before_manifest(uri: str, root: str) -> None:
    Registry(DiesBefore(open_store(uri), MANIFEST_FILE), MODEL).push(model_folder(Path(root), "killed"), push_metadata("killed"))


def promote_then_die_before_history(uri: str, version: int) -> None:
    Registry(DiesBefore(open_store(uri), "/history/"), MODEL).promote(version, "run-crash", reason="crash test")


def run_in_child(target, *args: Any) -> int:
    """Run ``target(*args)`` in a forked process; return its exit code."""
    process = FORK.Process(target=target, args=args)
    process.start()
    process.join()
    return process.exitcode


# -- versions -------------------------------------------------------------------------------------


def test_push_writes_numbered_versions_whose_manifest_holds_hashes_metrics_verdict_and_lineage(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    assert [push_tagged(store_uri, str(tmp_path), t)[1] for t in ("a", "b")] == [1, 2]
    assert registry.versions() == [1, 2]
    manifest = registry.manifest(2)
    assert set(manifest["files"]) == {WEIGHTS_FILE, CARD_FILE, METRICS_FILE}
    assert manifest["lineage"] == push_metadata("b")["lineage"]
    assert (manifest["version"], manifest["model"], manifest["verdict"]["decision"]) == (2, MODEL, "accepted")
    assert manifest["created_at"]


def test_pushes_from_racing_threads_get_distinct_versions_and_keep_their_own_files(store_uri: str, tmp_path: Path) -> None:
    tags = [f"t{i}" for i in range(6)]
    results = run_together(*[lambda t=t: push_tagged(store_uri, str(tmp_path / "src"), t) for t in tags])
    versions = {version: tag for tag, version in results}
    assert sorted(versions) == list(range(1, len(tags) + 1))
    registry = Registry(open_store(store_uri), MODEL)
    assert {v: tag_of(registry, v, tmp_path / "out") for v in versions} == versions


def test_pushes_from_racing_processes_get_distinct_versions_and_keep_their_own_files(store_uri: str, tmp_path: Path) -> None:
    jobs = [(store_uri, str(tmp_path / "src"), f"p{i}") for i in range(6)]
    with FORK.Pool(3) as pool:
        results = pool.starmap(push_tagged, jobs)
    versions = {version: tag for tag, version in results}
    assert sorted(versions) == list(range(1, len(jobs) + 1))
    registry = Registry(open_store(store_uri), MODEL)
    assert {v: tag_of(registry, v, tmp_path / "out") for v in versions} == versions


def test_push_killed_before_its_manifest_leaves_no_visible_version(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "complete")
    assert run_in_child(push_then_die_before_manifest, store_uri, str(tmp_path)) == -signal.SIGKILL
    assert registry.store.list(registry.version_prefix(2))  # its claim and files did land
    assert registry.versions() == [1]
    with pytest.raises(ModelFormatError, match="no complete version 2"):
        registry.manifest(2)
    with pytest.raises(ModelFormatError, match="no complete version 2"):
        registry.promote(2, "operator")
    assert push_tagged(store_uri, str(tmp_path / "next"), "after")[1] == 3  # the half-written number stays taken
    assert registry.versions() == [1, 3]


def test_download_checks_every_file_against_the_manifest(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "a")
    registry.store.write_bytes(f"{registry.version_prefix(1)}/{WEIGHTS_FILE}", b"swapped weights")
    with pytest.raises(ModelFormatError, match=f"{WEIGHTS_FILE} .* has SHA-256 .* manifest says"):
        registry.download(1, tmp_path / "out")


def test_materialize_gives_a_verified_local_folder_for_a_version_uri(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "a")
    folder = materialize(registry.version_uri(1), tmp_path / "scratch")
    assert verify_manifest(folder)["version"] == 1
    assert json.loads((folder / CARD_FILE).read_text()) == {"tag": "a"}


# -- production pointer and history ---------------------------------------------------------------


def test_of_two_racing_promotions_one_loses_and_is_told_where_the_pointer_went(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    for tag in ("a", "b", "c"):
        push_tagged(store_uri, str(tmp_path), tag)
    registry.promote(1, "run-setup")
    seen = registry.production()
    results = run_together(lambda: registry.promote(2, "run-b", seen), lambda: registry.promote(3, "run-c", seen))
    losers = [r for r in results if isinstance(r, ConflictError)]
    winners = [r.version for r in results if not isinstance(r, StoreError)]
    assert len(losers) == 1 and len(winners) == 1
    assert f"expected production at version 1, found it moved to version {winners[0]}" in str(losers[0])
    assert registry.production().version == winners[0]
    assert [(r["previous"], r["version"]) for r in registry.history()] == [(None, 1), (1, winners[0])]


def test_history_records_who_moved_the_pointer_from_which_version_to_which_when_and_why(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    for tag in ("a", "b"):
        push_tagged(store_uri, str(tmp_path), tag)
    registry.promote(1, "run-1", reason="first model")
    registry.promote(2, "alice", reason="better accuracy")
    records = registry.history()
    assert [(r["action"], r["previous"], r["version"], r["by"], r["reason"]) for r in records] == [
        ("promote", None, 1, "run-1", "first model"),
        ("promote", 1, 2, "alice", "better accuracy"),
    ]
    assert all(r["at"] and r["change_id"] for r in records)
    assert registry.production().record == records[-1]


def test_rollback_walks_back_through_earlier_production_versions_until_none_is_left(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    for tag in ("a", "b", "c"):
        push_tagged(store_uri, str(tmp_path), tag)
    for version in (1, 2, 3):
        registry.promote(version, "pipeline")
    assert registry.rollback("oncall", reason="canary errors").version == 2
    assert registry.rollback("oncall").version == 1
    with pytest.raises(RegistryError, match="expected an earlier production version of digits to roll back to, found none"):
        registry.rollback("oncall")
    last = registry.history()[-1]
    assert (last["action"], last["previous"], last["version"], last["by"]) == ("rollback", 2, 1, "oncall")
    windows = registry.served_windows()  # who served when: each window ends where the next begins
    assert [w[0] for w in windows] == [1, 2, 3, 2, 1] and windows[-1][2] is None
    assert [w[2] for w in windows[:-1]] == [w[1] for w in windows[1:]]


def test_a_promotion_whose_writer_died_before_recording_it_still_appears_in_history(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    for tag in ("a", "b"):
        push_tagged(store_uri, str(tmp_path), tag)
    assert run_in_child(promote_then_die_before_history, store_uri, 1) == -signal.SIGKILL
    assert registry.production().version == 1
    assert [(r["version"], r["by"]) for r in registry.history()] == [(1, "run-crash")]
    registry.promote(2, "run-next")
    assert len(registry.store.list(f"{registry.root}/history")) == 2  # the next change wrote the missing record
    assert [r["version"] for r in registry.history()] == [1, 2]


def test_production_stack_replays_promotions_and_rollbacks() -> None:
    history = [{"version": 1}, {"version": 2, "action": "promote"}, {"version": 2}, {"version": 3},
               {"version": 2, "action": "rollback"}]
    assert production_stack(history) == [1, 2]


# -- Blob only -----------------------------------------------------------------------------------


def test_tampered_manifest_blob_is_reported_as_tampered_not_as_a_missing_version(azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    uri = azurite.new_container()
    registry = Registry(open_store(uri), MODEL)
    push_tagged(uri, str(tmp_path), "a")
    store = registry.store
    assert isinstance(store, BlobStore)
    raw = BlobServiceClient.from_connection_string(azurite.connection_string).get_blob_client(
        store.location.container, f"{registry.version_prefix(1)}/{MANIFEST_FILE}")
    raw.upload_blob(b'{"files": {}}', overwrite=True, metadata=raw.get_blob_properties().metadata)
    with pytest.raises(StoreError, match="it was modified or corrupted"):
        registry.manifest(1)


# -- the gate's verdict and what the store holds ------------------------------------------------------


def push_rejected(uri: str, root: Path, tag: str) -> int:
    metadata = {**push_metadata(tag), "verdict": {"decision": "rejected", "reason": "accuracy 0.5600 is below the threshold 0.9500"}}
    return Registry(open_store(uri), MODEL).push(model_folder(root, tag), metadata)


def test_the_pointer_moves_to_a_rejected_version_only_when_forced_with_a_reason(store_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_store(store_uri), MODEL)
    push_tagged(store_uri, str(tmp_path), "good")
    rejected = push_rejected(store_uri, tmp_path, "bad")
    registry.promote(1, "pipeline")
    with pytest.raises(RegistryError, match="found version 2 rejected \\(accuracy 0.5600 is below the threshold 0.9500\\); nothing moved"):
        registry.promote(rejected, "alice")
    with pytest.raises(RegistryError, match="expected --reason TEXT with --force"):
        registry.promote(rejected, "alice", force=True, reason="  ")
    assert registry.production().version == 1 and len(registry.history()) == 1
    pointer = registry.promote(rejected, "alice", force=True, reason="the threshold is wrong for this data")
    assert (pointer.version, pointer.record["forced"], pointer.record["reason"]) == (2, True, "the threshold is wrong for this data")
    assert [r["forced"] for r in registry.history()] == [False, True]
    assert registry.rollback("oncall").version == 1  # back to an accepted version: no force needed
    assert registry.history()[-1]["forced"] is False


def test_a_registry_that_lacks_the_model_names_the_models_it_holds(store_uri: str, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="found none: the store holds no registry at all"):
        Registry(open_store(store_uri), MODEL).check_exists()
    push_tagged(store_uri, str(tmp_path), "a")
    Registry(open_store(store_uri), MODEL).check_exists()
    with pytest.raises(RegistryError, match="expected model 'digitz' .* found no such model; the models there: digits$"):
        Registry(open_store(store_uri), "digitz").check_exists()
