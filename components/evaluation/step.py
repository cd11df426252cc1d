"""The evaluation step: score the candidate, and the production model on the same test split."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.data.prepare import load_prepared
from components.evaluation.evaluate import EvalResult, Verdict, evaluate_model, gate
from components.registry import Registry
from components.store import open_store


@dataclass(frozen=True)
class Evaluation:
    candidate: EvalResult
    verdict: Verdict
    champion: EvalResult | None
    champion_version: int | None

    def to_dict(self) -> dict:
        return {
            "candidate": self.candidate.to_dict(),
            "verdict": {"decision": self.verdict.decision, "reason": self.verdict.reason},
            "champion": self.champion.to_dict() if self.champion else None,
            "champion_version": self.champion_version,
        }


def run_evaluation(store_uri: str, dataset_prefix: str, model_prefix: str, model_name: str,
                   threshold: float, tolerance: float) -> Evaluation:
    data = load_prepared(store_uri, dataset_prefix, ("test",))
    images, labels = data.images["test"], data.labels["test"]
    store = open_store(store_uri)
    with tempfile.TemporaryDirectory(prefix="eval-") as tmp:
        candidate_dir = Path(tmp, "candidate")
        store.download_prefix(model_prefix, candidate_dir)
        candidate = evaluate_model(candidate_dir, images, labels)
        champion, champion_version = _evaluate_champion(Registry(store, model_name), Path(tmp, "champion"), images, labels)
    verdict = gate(candidate.accuracy, threshold, champion.accuracy if champion else None, tolerance)
    return Evaluation(candidate, verdict, champion, champion_version)


def _evaluate_champion(registry: Registry, folder: Path, images, labels) -> tuple[EvalResult | None, int | None]:
    version = registry.production().version
    if version is None:
        return None, None
    registry.download(version, folder)  # verifies hashes: a tampered champion fails loudly
    return evaluate_model(folder, images, labels), version
