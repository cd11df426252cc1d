"""The evaluation step: score the candidate, and the production model on the same test split, in one pass."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.data.prepare import read_info
from components.data.shards import iter_records, temporary_reader
from components.evaluation.evaluate import (
    REJECTED,
    EvalResult,
    MistakeSample,
    Verdict,
    compare_cards,
    evaluate_models,
    gate,
    refuse_candidate,
    summarize,
    unlike_verdict,
)
from components.modelfile import ModelCard, load_card
from components.registry import Registry
from components.store import Store
from components.training.worker import HISTORY_FILE

EVAL_BATCH = 128  # images per forward pass: bounds activation memory, whatever the split size


@dataclass(frozen=True)
class Evaluation:
    candidate: EvalResult
    verdict: Verdict
    champion: EvalResult | None
    champion_version: int | None
    threshold: float = 0.0
    tolerance: float = 0.0
    data_hash: str = ""  # the prepared data set's content hash
    training: dict[str, Any] = field(default_factory=dict)  # the candidate's training configuration, when it has one
    mistakes: MistakeSample = field(default_factory=MistakeSample)  # the candidate's; for the report, not the JSON

    def to_dict(self) -> dict:
        return {
            "candidate": self.candidate.to_dict(),
            "verdict": {"decision": self.verdict.decision, "reason": self.verdict.reason},
            "champion": self.champion.to_dict() if self.champion else None,
            "champion_version": self.champion_version,
        }


def run_evaluation(store: Store, dataset_prefix: str, model_prefix: str, model_name: str,
                   threshold: float, tolerance: float) -> Evaluation:
    """Stream the test split once through the candidate and (when there is one, and it is like the candidate)
    the production model. ``champion_version`` is the production version read here: the deploy step promotes
    only while production is still that version."""
    info = read_info(store, dataset_prefix)
    registry = Registry(store, model_name)
    champion_version = registry.production().version
    mistakes = MistakeSample()
    with tempfile.TemporaryDirectory(prefix="eval-") as tmp:
        folders = [Path(tmp, "candidate")]
        store.download_prefix(model_prefix, folders[0])
        candidate, training = load_card(folders[0]), training_config(folders[0])

        def finish(result: EvalResult, verdict: Verdict, champion: EvalResult | None = None) -> Evaluation:
            return Evaluation(result, verdict, champion, champion_version, threshold, tolerance, info.content_hash,
                              training, mistakes)

        if refusal := refuse_candidate(candidate, info.class_names):
            return finish(unscored(candidate), Verdict(REJECTED, refusal))
        differences = _champion_differences(registry, champion_version, candidate, Path(tmp, "champion"), folders)
        with temporary_reader(store, info.prefix, info.image_shape) as reader:
            results = evaluate_models(folders, iter_records(reader, info.shard_list("test"), EVAL_BATCH), mistakes)
    if differences:
        return finish(results[0], unlike_verdict(differences, champion_version))
    champion = results[1] if len(results) > 1 else None
    return finish(results[0], gate(results[0].accuracy, threshold, champion.accuracy if champion else None, tolerance,
                                   champion_version), champion)


def training_config(folder: Path) -> dict[str, Any]:
    """The training settings the candidate was made with (its ``history.json``); {} for a model folder made
    elsewhere, which has none."""
    path = folder / HISTORY_FILE
    return dict(json.loads(path.read_text()).get("config", {})) if path.exists() else {}


def _champion_differences(registry: Registry, version: int | None, candidate: ModelCard, folder: Path,
                          folders: list[Path]) -> list[str]:
    """Download the champion (hashes verified) and add it to ``folders`` when it is like the candidate;
    return how it differs otherwise (an unlike champion is not scored: it may not even take these images)."""
    if version is None:
        return []
    registry.download(version, folder)  # verifies hashes: a tampered champion fails loudly
    differences = compare_cards(candidate, load_card(folder))
    if not differences:
        folders.append(folder)
    return differences


def unscored(card: ModelCard) -> EvalResult:
    """The result of a candidate refused before scoring: no images, accuracy 0."""
    return summarize(np.zeros((card.num_classes, card.num_classes), dtype=np.int64), card.class_names)
