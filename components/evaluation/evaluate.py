"""Evaluate a model version on the test split and decide whether it may ship.

The gate: the candidate must be a classifier of at least two classes, of the data set's classes; when a
production model exists it must be like it (the same class names, input shape and preprocessing), since
accuracies of unlike models on one test split say nothing about which is better; it must reach an absolute
accuracy threshold and must not be worse than production on the same test split by more than a tolerance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from components.modelfile import ModelCard, load_model
from components.predict import predict_logits

ACCEPTED = "accepted"
REJECTED = "rejected"
MIN_CLASSES = 2  # one class scores 1.0 on its own test split and answers the same for every input


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


def refuse_candidate(card: ModelCard, data_class_names: list[str]) -> str | None:
    """Why the candidate cannot be scored on this data set at all (None: it can)."""
    if card.num_classes < MIN_CLASSES:
        return (f"the candidate has {card.num_classes} class(es) {_names(card.class_names)} in model.json class_names; "
                f"a classifier needs at least {MIN_CLASSES}")
    if card.class_names != list(data_class_names):
        return f"the candidate's class names {_names(card.class_names)} differ from the data set's {_names(data_class_names)}"
    return None


def compare_cards(candidate: ModelCard, champion: ModelCard) -> list[str]:
    """Each way the candidate differs from production in what it takes in and what it answers."""
    differences = []
    if candidate.class_names != champion.class_names:
        differences.append(f"class names {_names(candidate.class_names)} differ from production's {_names(champion.class_names)}")
    if candidate.input_shape != champion.input_shape:
        differences.append(f"input shape {candidate.input_shape} differs from production's {champion.input_shape}")
    if candidate.preprocess != champion.preprocess:
        differences.append(f"preprocess {candidate.preprocess!r} differs from production's {champion.preprocess!r}")
    return differences


def unlike_verdict(differences: list[str], champion_version: int) -> Verdict:
    """The rejection of a candidate that is not comparable with production."""
    return Verdict(REJECTED, f"the candidate is not like production version {champion_version}: " + "; ".join(differences)
                   + " (promote a different kind of model by hand: python -m pipelines registry promote)")


def _names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")
    return f"[{shown}]"


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
