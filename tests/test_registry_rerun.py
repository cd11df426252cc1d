"""A rerun that reproduces production's weights byte for byte (same data, code and seed): the push step
registers it and says so, the deploy step rolls nothing out and leaves production where it is."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from components.deploy.local import read_state, stop
from components.deploy.step import KServeTarget, deploy
from components.modelfile import WEIGHTS_FILE
from components.push.push import push_model
from components.registry import Registry, split_pinned
from components.store import Store, open_store
from components.training.worker import HISTORY_FILE
from pipelines.registry_cli import main
from tests.conftest import make_version_folder
from tests.test_deploy_gate import META, deploy_with


def trained(store: Store, tmp_path: Path, run: str, seed: int) -> str:
    """A training run's model files in the store (as train_model leaves them, its history too); return their prefix."""
    folder = make_version_folder(tmp_path / run, seed=seed)
    prefix = f"runs/{run}/model"
    config = {"store_uri": store.uri, "dataset_prefix": "prepared/x", "output_prefix": prefix, "arch": "small_cnn",
              "epochs": 3, "lr": 0.003, "seed": seed}
    (folder / HISTORY_FILE).write_text(json.dumps({"epochs": [], "config": config}))
    for path in folder.iterdir():
        store.upload_file(f"{prefix}/{path.name}", path)
    return prefix


def test_push_registers_a_rerun_of_production_and_says_it_is_identical(store_uri: str, tmp_path: Path) -> None:
    store = open_store(store_uri)
    registry = Registry(store, "digits")
    verdict = {"decision": "accepted", "reason": "test"}
    first = push_model(store, "digits", trained(store, tmp_path, "r1", seed=0), {}, verdict, {"run_id": "r1"})
    assert (first.version, first.identical_to) == (1, None) and "identical" not in first.describe()
    registry.promote(1, "pipeline")

    rerun = push_model(store, "digits", trained(store, tmp_path, "r2", seed=0), {}, verdict, {"run_id": "r2"})
    assert (rerun.version, rerun.identical_to) == (2, 1)
    assert rerun.describe() == (f"registered digits version 2 at {registry.version_uri(2)} (accepted); its weights are "
                                "identical to production version 1's (the same SHA-256: the same data, code and seed): "
                                "nothing new to deploy, production stays at version 1")
    other = push_model(store, "digits", trained(store, tmp_path, "r3", seed=1), {}, verdict, {"run_id": "r3"})
    assert (other.version, other.identical_to) == (3, None)


def test_push_records_the_training_settings_without_locations_and_show_prints_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(str(tmp_path / "store"))
    pushed = push_model(store, "digits", trained(store, tmp_path, "r1", seed=7), {}, {"decision": "accepted", "reason": ""}, {})
    manifest = Registry(store, "digits").manifest(pushed.version)
    assert manifest["lineage"]["parameters"] == {"arch": "small_cnn", "epochs": 3, "lr": 0.003, "seed": 7}
    assert HISTORY_FILE not in manifest["files"]
    assert main(["registry", "show", "--store", store.uri, "--model", "digits", "--version", "1"]) == 0
    assert "  training    arch=small_cnn, epochs=3, lr=0.003, seed=7\n" in capsys.readouterr().out


def test_identical_production_compares_the_weights_hash_with_production_only(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(open_store(store_uri), "digits")
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        registry.push(make_version_folder(tmp_path / run, seed=seed), META)
    assert registry.identical_production(2) is None  # nothing in production yet
    registry.promote(1, "pipeline")
    assert [registry.identical_production(v) for v in (1, 2, 3)] == [None, 1, None]  # production itself is not a rerun of it
    assert main(["registry", "show", "--store", store_uri, "--model", "digits", "--version", "2"]) == 0
    weights = registry.manifest(2)["files"][WEIGHTS_FILE]["sha256"]
    assert f"  weights     sha256 {weights} (identical to production version 1)\n" in capsys.readouterr().out


def test_the_kserve_target_rolls_nothing_out_for_a_rerun_of_production(prepared, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"rerun-{uuid.uuid4().hex[:6]}"
    registry = Registry(open_store(prepared.store_uri), name)
    first = registry.push(make_version_folder(tmp_path / "first", seed=0), META)
    registry.promote(first, "pipeline")
    rerun = registry.push(make_version_folder(tmp_path / "rerun", seed=0), META)
    # No Kubernetes API is reachable from here: touching the cluster at all would fail this call.
    record = deploy("kserve", registry.store, prepared.prefix, name, rerun, registry.version_uri(rerun), "run-2", 0, "",
                    first, KServeTarget("ns"))
    assert (record["identical_to_production"], record["version"], record["pushed_version"]) == (first, first, rerun)
    assert f"{name} version {rerun} is identical to production version {first}" in capsys.readouterr().out
    assert registry.production().version == first and len(registry.history()) == 1


def test_a_local_rerun_of_production_keeps_the_running_server_and_restarts_one_only_when_none_runs(
    prepared, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"rerun-{uuid.uuid4().hex[:6]}"
    registry = Registry(open_store(prepared.store_uri), name)
    state = tmp_path / "serving"
    first = registry.push(make_version_folder(tmp_path / "first", seed=0), META)
    try:
        deploy_with(prepared, tmp_path, name, first, judged=None)
        served = read_state(state)
        capsys.readouterr()

        rerun = registry.push(make_version_folder(tmp_path / "rerun", seed=0), META)
        url = deploy_with(prepared, tmp_path, name, rerun, judged=first)
        assert (f"{name} version {rerun} is identical to production version {first} (the same weights SHA-256): "
                f"not deployed again; production stays at version {first}") in capsys.readouterr().out
        assert read_state(state) == served and url == served.url  # the same server process, not restarted
        assert json.loads((tmp_path / "endpoint.json").read_text())["identical_to_production"] == first
        assert registry.production().version == first and len(registry.history()) == 1

        stop(state)  # `make stop` since: the next rerun starts production's server again, and still promotes nothing
        again = registry.push(make_version_folder(tmp_path / "again", seed=0), META)
        deploy_with(prepared, tmp_path, name, again, judged=first)
        restarted = read_state(state)
        assert restarted is not None and restarted.pid != served.pid
        assert split_pinned(restarted.model_uri) == (registry.version_uri(first), registry.production().record["manifest_sha256"])
        assert registry.production().version == first and len(registry.history()) == 1
    finally:
        stop(state)
