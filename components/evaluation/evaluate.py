"""Evaluate a model version on the test split and decide whether it may ship.

The gate: the candidate must reach an absolute accuracy threshold and, when a production model
exists, must not be worse than it on the same test split by more than a tolerance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from components.modelfile import load_model
from components.predict import predict_logits

ACCEPTED = "accepted"
REJECTED = "rejected"


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    precision: dict[str, float]
    recall: dict[str, float]
    class_names: list[str]
    count: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    decision: str  # ACCEPTED or REJECTED
    reason: str

    @property
    def accepted(self) -> bool:
        return self.decision == ACCEPTED


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def summarize(matrix: np.ndarray, class_names: list[str]) -> EvalResult:
    """Accuracy, per-class precision and recall from a confusion matrix (0 where undefined)."""
    true_pos = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
    total = int(matrix.sum())
    return EvalResult(
        accuracy=float(true_pos.sum() / total) if total else 0.0,
        confusion=matrix.tolist(),
        precision={n: round(float(p), 6) for n, p in zip(class_names, precision)},
        recall={n: round(float(r), 6) for n, r in zip(class_names, recall)},
        class_names=list(class_names),
        count=total,
    )


def evaluate_models(model_dirs: list[Path], batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[EvalResult]:
    """Score every model version in ``model_dirs`` on the same stream of ``(uint8 [n,C,H,W], labels)`` batches.

    One pass over the data for all of them; memory is one confusion matrix per model.
    """
    loaded = [load_model(folder) for folder in model_dirs]
    matrices = [np.zeros((card.num_classes, card.num_classes), dtype=np.int64) for _, card in loaded]
    for images, labels in batches:
        pixels = torch.from_numpy(images)
        for (model, card), matrix in zip(loaded, matrices):
            matrix += confusion_matrix(labels, predict_logits(model, pixels, card).argmax(1).numpy(), card.num_classes)
    return [summarize(matrix, card.class_names) for matrix, (_, card) in zip(matrices, loaded)]


def evaluate_model(model_dir: Path, images: np.ndarray, labels: np.ndarray) -> EvalResult:
    """Run the model version in ``model_dir`` on ``uint8 [N,C,H,W]`` images and score it."""
    return evaluate_models([model_dir], [(images, labels)])[0]


def gate(candidate: float, threshold: float, champion: float | None = None, tolerance: float = 0.0) -> Verdict:
    """Accept when ``candidate >= threshold`` and (if a champion exists) ``candidate >= champion - tolerance``."""
    if candidate < threshold:
        return Verdict(REJECTED, f"accuracy {candidate:.4f} is below the threshold {threshold:.4f}")
    if champion is not None and candidate < champion - tolerance:
        return Verdict(
            REJECTED,
            f"accuracy {candidate:.4f} is worse than production's {champion:.4f} by more than the tolerance {tolerance:.4f}",
        )
    versus = f"; production scored {champion:.4f}" if champion is not None else "; no production model yet"
    return Verdict(ACCEPTED, f"accuracy {candidate:.4f} meets the threshold {threshold:.4f}{versus}")


def markdown_report(candidate: EvalResult, verdict: Verdict, champion: EvalResult | None = None) -> str:
    """A report a person reads in the Kubeflow UI: verdict, accuracies, per-class table."""
    lines = [f"# Evaluation: **{verdict.decision}**", "", verdict.reason, ""]
    headers = ["class", "candidate precision", "candidate recall"] + (["production precision", "production recall"] if champion else [])
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name in candidate.class_names:
        row = [name, f"{candidate.precision[name]:.3f}", f"{candidate.recall[name]:.3f}"]
        if champion:
            row += [f"{champion.precision.get(name, 0):.3f}", f"{champion.recall.get(name, 0):.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    summary = f"candidate accuracy **{candidate.accuracy:.4f}** on {candidate.count} test images"
    if champion:
        summary += f"; production accuracy **{champion.accuracy:.4f}** on the same images"
    return "\n".join([*lines, "", summary, ""])
