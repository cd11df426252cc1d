"""Evaluate a model version on the test split and decide whether it may ship.

The gate: the candidate must be a classifier of at least two classes, of the data set's classes; when a
production model exists it must be like it (the same class names, input shape and preprocessing), since
accuracies of unlike models on one test split say nothing about which is better; it must reach an absolute
accuracy threshold and must not be worse than production on the same test split by more than a tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from components.evaluation import ACCEPTED, REJECTED
from components.evaluation.pictures import png_thumbnail
from components.modelfile import ModelCard, load_model
from components.predict import predict_logits

MIN_CLASSES = 2  # one class scores 1.0 on its own test split and answers the same for every input
CONFIDENCE_Z = 1.959964  # the normal quantile of a two-sided 95% interval
MISTAKES_SHOWN = 24  # misclassified test images kept for the report


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    precision: dict[str, float]
    recall: dict[str, float]
    class_names: list[str]
    count: int

    @property
    def correct(self) -> int:
        return int(np.trace(np.asarray(self.confusion, dtype=np.int64)))

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% Wilson score interval of the accuracy (the test split as a sample of the images to come)."""
        return wilson_interval(self.correct, self.count)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Mistake:
    """One misclassified test image, as the PNG thumbnail the report shows."""

    png: bytes = field(repr=False)
    width: int
    height: int
    true: int
    predicted: int


@dataclass
class MistakeSample:
    """The first ``limit`` misclassified images in test-split order (deterministic, and memory is ``limit``
    thumbnails whatever the split's size), and how many there were in all."""

    limit: int = MISTAKES_SHOWN
    kept: list[Mistake] = field(default_factory=list)
    total: int = 0

    def add(self, images: np.ndarray, labels: np.ndarray, predictions: np.ndarray) -> None:
        wrong = np.flatnonzero(labels != predictions)
        self.total += len(wrong)
        for i in wrong[: max(0, self.limit - len(self.kept))]:
            self.kept.append(Mistake(*png_thumbnail(images[i]), true=int(labels[i]), predicted=int(predictions[i])))


@dataclass(frozen=True)
class Verdict:
    decision: str  # ACCEPTED or REJECTED
    reason: str

    @property
    def accepted(self) -> bool:
        return self.decision == ACCEPTED


def wilson_interval(successes: int, trials: int, z: float = CONFIDENCE_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion: unlike the normal approximation it stays inside [0, 1] and
    is not zero-width at 0 or 1 (0.9944 on 1,797 images is not "exactly 0.9944"). No trials: (0, 1)."""
    if trials <= 0:
        return 0.0, 1.0
    p, z2 = successes / trials, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


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


def evaluate_models(model_dirs: list[Path], batches: Iterable[tuple[np.ndarray, np.ndarray]],
                    mistakes: MistakeSample | None = None) -> list[EvalResult]:
    """Score every model version in ``model_dirs`` on the same stream of ``(uint8 [n,C,H,W], labels)`` batches.

    One pass over the data for all of them; memory is one confusion matrix per model. ``mistakes``, when
    given, collects the first model's (the candidate's) misclassified images.
    """
    loaded = [load_model(folder) for folder in model_dirs]
    matrices = [np.zeros((card.num_classes, card.num_classes), dtype=np.int64) for _, card in loaded]
    for images, labels in batches:
        pixels = torch.from_numpy(images)
        for k, ((model, card), matrix) in enumerate(zip(loaded, matrices)):
            predictions = predict_logits(model, pixels, card).argmax(1).numpy()
            matrix += confusion_matrix(labels, predictions, card.num_classes)
            if k == 0 and mistakes is not None:
                mistakes.add(images, labels, predictions)
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


def gate(candidate: float, threshold: float, champion: float | None = None, tolerance: float = 0.0,
         champion_version: int | None = None) -> Verdict:
    """Accept when ``candidate >= threshold`` and (if a champion exists) ``candidate >= champion - tolerance``.
    ``champion_version`` only names the champion in the reason."""
    production = "production" if champion_version is None else f"production version {champion_version}"
    if candidate < threshold:
        return Verdict(REJECTED, f"accuracy {candidate:.4f} is below the threshold {threshold:.4f}")
    if champion is not None and candidate < champion - tolerance:
        return Verdict(
            REJECTED,
            f"accuracy {candidate:.4f} is worse than {production}'s {champion:.4f} by more than the tolerance {tolerance:.4f}",
        )
    versus = f"; {production} scored {champion:.4f}" if champion is not None else "; no production model yet"
    return Verdict(ACCEPTED, f"accuracy {candidate:.4f} meets the threshold {threshold:.4f}{versus}")
