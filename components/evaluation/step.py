"""The evaluation step: score the candidate, and the production model on the same test split, in one pass."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.data.prepare import read_info
from components.data.shards import iter_records, temporary_reader
from components.evaluation.evaluate import EvalResult, Verdict, evaluate_models, gate
from components.registry import Registry
from components.store import Store

EVAL_BATCH = 128  # images per forward pass: bounds activation memory, whatever the split size


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


def run_evaluation(store: Store, dataset_prefix: str, model_prefix: str, model_name: str,
                   threshold: float, tolerance: float) -> Evaluation:
    """Stream the test split once through the candidate and (when there is one) the production model."""
    info = read_info(store, dataset_prefix)
    registry = Registry(store, model_name)
    champion_version = registry.production().version
    with tempfile.TemporaryDirectory(prefix="eval-") as tmp:
        folders = [Path(tmp, "candidate")]
        store.download_prefix(model_prefix, folders[0])
        if champion_version is not None:
            folders.append(Path(tmp, "champion"))
            registry.download(champion_version, folders[1])  # verifies hashes: a tampered champion fails loudly
        with temporary_reader(store, info.prefix, info.image_shape) as reader:
            results = evaluate_models(folders, iter_records(reader, info.shard_list("test"), EVAL_BATCH))
    champion = results[1] if champion_version is not None else None
    verdict = gate(results[0].accuracy, threshold, champion.accuracy if champion else None, tolerance)
    return Evaluation(results[0], verdict, champion, champion_version)
