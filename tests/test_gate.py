"""The gate compares like with like: a candidate whose class names, input shape or preprocessing differ from
production's is rejected with the reason before any accuracy is compared, and two classes are the minimum.
Real model folders, the real registry and the prepared digits sample."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from components.evaluation.evaluate import REJECTED, compare_cards
from components.evaluation.step import run_evaluation
from components.modelfile import ModelCard
from components.registry import Registry
from components.store import open_store
from tests.conftest import make_version_folder

DIGITS = ModelCard("small_cnn", 1, 28, 28, [str(d) for d in range(10)], [0.15], [0.28])


def put_candidate(store_uri: str, folder: Path) -> str:
    """Upload a model folder where the training step leaves one; return its prefix."""
    store, prefix = open_store(store_uri), f"runs/{uuid.uuid4().hex[:8]}/model"
    for path in folder.iterdir():
        store.upload_file(f"{prefix}/{path.name}", path)
    return prefix


def promote_champion(store_uri: str, name: str, folder: Path) -> None:
    registry = Registry(open_store(store_uri), name)
    registry.promote(registry.push(folder, {"metrics": {}, "verdict": {}, "lineage": {}}), "setup")


def evaluate(prepared, name: str, candidate: ModelCard, tmp_path: Path):
    prefix = put_candidate(prepared.store_uri, make_version_folder(tmp_path / "candidate", card=candidate))
    return run_evaluation(open_store(prepared.store_uri), prepared.prefix, prefix, name, threshold=0.0, tolerance=1.0)


def test_a_one_class_candidate_is_rejected_even_with_no_production_model(prepared, tmp_path: Path) -> None:
    result = evaluate(prepared, f"one-{uuid.uuid4().hex[:6]}", replace(DIGITS, class_names=["0"]), tmp_path)
    assert result.verdict.decision == REJECTED
    assert "1 class" in result.verdict.reason and "at least 2" in result.verdict.reason


@pytest.mark.parametrize(
    ("champion", "why"),
    [
        (replace(DIGITS, class_names=[f"c{d}" for d in range(10)]), "class names"),
        (replace(DIGITS, class_names=["0", "1"]), "class names"),
        (replace(DIGITS, height=32, width=32), "input shape"),
    ],
)
def test_a_candidate_unlike_production_is_rejected_with_the_reason(prepared, tmp_path: Path, champion: ModelCard, why: str) -> None:
    name = f"unlike-{uuid.uuid4().hex[:6]}"
    promote_champion(prepared.store_uri, name, make_version_folder(tmp_path / "champion", card=champion))
    result = evaluate(prepared, name, DIGITS, tmp_path)
    assert result.verdict.decision == REJECTED and why in result.verdict.reason
    assert "production version 1" in result.verdict.reason and result.champion_version == 1


def test_a_candidate_like_production_is_compared_on_accuracy(prepared, tmp_path: Path) -> None:
    name = f"like-{uuid.uuid4().hex[:6]}"
    promote_champion(prepared.store_uri, name, make_version_folder(tmp_path / "champion", seed=1))
    result = evaluate(prepared, name, DIGITS, tmp_path)
    assert result.champion is not None and result.champion.count == result.candidate.count == 179
    assert "production version 1 scored" in result.verdict.reason


def test_the_evaluation_records_the_data_hash_the_training_settings_and_the_mistakes(prepared, tmp_path: Path) -> None:
    import json

    from components.training.worker import HISTORY_FILE

    folder = make_version_folder(tmp_path / "candidate")
    (folder / HISTORY_FILE).write_text(json.dumps({"epochs": [], "config": {"arch": "small_cnn", "lr": 0.05}}))
    result = run_evaluation(open_store(prepared.store_uri), prepared.prefix, put_candidate(prepared.store_uri, folder),
                            f"facts-{uuid.uuid4().hex[:6]}", threshold=0.5, tolerance=0.0)
    assert result.data_hash == prepared.content_hash and result.training == {"arch": "small_cnn", "lr": 0.05}
    assert (result.threshold, result.tolerance) == (0.5, 0.0)
    assert result.mistakes.total == result.candidate.count - result.candidate.correct > 0
    assert "mistakes" not in result.to_dict(), "the pictures are for the report, not the registry's metrics"


def test_the_evaluate_component_writes_both_reports_with_the_run_and_the_champion(prepared, tmp_path: Path) -> None:
    from kfp import dsl

    from components.evaluation.component import evaluate_model

    name = f"component-{uuid.uuid4().hex[:6]}"
    promote_champion(prepared.store_uri, name, make_version_folder(tmp_path / "champion", seed=1))
    outputs = {key: tmp_path / file for key, file in (("metrics", "metrics.json"), ("confusion", "confusion.json"),
                                                      ("report", "report.md"), ("report_html", "report.html"),
                                                      ("evaluation", "evaluation.json"))}
    decision = evaluate_model.python_func(
        dataset=dsl.Dataset(uri=str(tmp_path / "dataset"), metadata={"prefix": prepared.prefix}),
        model=dsl.Model(uri=str(tmp_path / "model"), metadata={"prefix": put_candidate(prepared.store_uri, make_version_folder(tmp_path / "candidate"))}),
        store_uri=prepared.store_uri, model_name=name, accuracy_threshold=0.0, tolerance=1.0, run_id="run-77", code_version="c0ffee",
        metrics=dsl.Metrics(uri=str(outputs["metrics"])), confusion=dsl.ClassificationMetrics(uri=str(outputs["confusion"])),
        report=dsl.Markdown(uri=str(outputs["report"])), report_html=dsl.HTML(uri=str(outputs["report_html"])),
        evaluation=dsl.Artifact(uri=str(outputs["evaluation"])))
    markdown, page = outputs["report"].read_text(), outputs["report_html"].read_text()
    assert decision == "accepted" and "production version 1 scored" in markdown
    for text in (markdown, page):
        assert "run-77" in text and "c0ffee" in text and prepared.content_hash in text
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="confusion"' in page and "data:image/png;base64," in page


def test_compare_cards_names_each_difference() -> None:
    assert compare_cards(DIGITS, DIGITS) == []
    other = replace(DIGITS, preprocess="resize-nearest", in_channels=3, mean=[0.1] * 3, std=[0.2] * 3)
    found = compare_cards(other, DIGITS)
    assert any("preprocess" in d for d in found) and any("input shape [3, 28, 28]" in d for d in found)


def test_a_champion_whose_manifest_changed_since_its_promotion_fails_the_evaluation_loudly(prepared, tmp_path: Path) -> None:
    import json

    from components.errors import ModelFormatError

    name = f"forged-{uuid.uuid4().hex[:6]}"
    promote_champion(prepared.store_uri, name, make_version_folder(tmp_path / "champion", seed=1))
    store = open_store(prepared.store_uri)
    key = f"{Registry(store, name).version_prefix(1)}/MANIFEST.json"
    store.write_bytes(key, json.dumps({**json.loads(store.read_bytes(key)), "metrics": {"accuracy": 1.0}}).encode())
    with pytest.raises(ModelFormatError, match="changed since it was promoted"):
        evaluate(prepared, name, DIGITS, tmp_path)
