"""The gate cannot be raced: the deploy step promotes only while production is still the champion the
evaluate step judged the candidate against, and it serves the version pinned to its manifest's digest."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kfp import dsl

from components.deploy.component import deploy_model
from components.deploy.local import read_state
from components.errors import ConflictError
from components.registry import Registry
from components.store import open_store
from tests.conftest import free_port, make_version_folder

META = {"metrics": {}, "verdict": {"decision": "accepted", "reason": "test"}, "lineage": {}}


def deploy_with(prepared, tmp_path: Path, name: str, version: int, judged: int | None) -> str:
    """Call the deploy component as the pipeline does, with the evaluate step's artifact naming ``judged``."""
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"verdict": {"decision": "accepted", "reason": "test"}, "champion_version": judged}))
    registry = Registry(open_store(prepared.store_uri), name)
    return deploy_model.python_func(
        dataset=dsl.Dataset(uri=str(tmp_path / "dataset"), metadata={"prefix": prepared.prefix}),
        evaluation=dsl.Artifact(uri=str(evaluation)), store_uri=prepared.store_uri, model_name=name, version=version,
        model_uri=registry.version_uri(version), run_id="run-weak", target="local", serving_port=free_port(),
        local_state_dir=str(tmp_path / "serving"), kserve_namespace="ns", serving_gpus=0, deployment_mode="Serverless",
        canary_percent=10, collect_uri="", collect_fraction=0.1, collect_images_fraction=0.01,
        endpoint=dsl.Artifact(uri=str(tmp_path / "endpoint.json")))


def test_a_candidate_judged_while_production_was_empty_is_not_promoted_over_one_promoted_meanwhile(prepared, tmp_path: Path) -> None:
    name = f"race-{uuid.uuid4().hex[:6]}"
    registry = Registry(open_store(prepared.store_uri), name)
    weak = registry.push(make_version_folder(tmp_path / "weak", seed=0), META)  # evaluated while production was empty
    strong = registry.push(make_version_folder(tmp_path / "strong", seed=1), META)
    registry.promote(strong, "run-strong")  # promoted while the weak one was on its way to deploy
    with pytest.raises(ConflictError, match=f"moved from version none .* to version {strong}"):
        deploy_with(prepared, tmp_path, name, weak, judged=None)
    assert registry.production().version == strong
    assert read_state(tmp_path / "serving") is None  # refused before a server was started


def test_the_deploy_step_takes_the_judged_champion_from_the_evaluate_step(tmp_path: Path) -> None:
    import yaml

    from pipelines.cli import compile_pipeline

    package = next(yaml.safe_load_all(compile_pipeline(tmp_path / "pipeline.yaml").read_text()))
    deploy = package["components"]["comp-condition-1"]["dag"]["tasks"]["deploy-model"]
    source = deploy["inputs"]["artifacts"]["evaluation"]
    assert source == {"componentInputArtifact": "pipelinechannel--evaluate-model-evaluation"}
    condition = package["root"]["dag"]["tasks"]["condition-1"]
    assert condition["inputs"]["artifacts"]["pipelinechannel--evaluate-model-evaluation"]["taskOutputArtifact"] == {
        "outputArtifactKey": "evaluation", "producerTask": "evaluate-model"}
