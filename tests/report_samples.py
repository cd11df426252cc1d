"""A hand-built evaluation and training history for the report tests: known numbers, no training.

The challenger gets 147 of 150 test images right, the champion (production version 3) 143; the challenger's
three mistakes are a cat taken for a dog and two birds taken for dogs, each image a white square on black.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from components.evaluation.evaluate import MistakeSample, gate, summarize
from components.evaluation.report import RunInfo
from components.evaluation.step import Evaluation

CLASSES = ["cat", "dog", "bird"]
CHALLENGER = np.array([[49, 1, 0], [0, 50, 0], [0, 2, 48]])
CHAMPION = np.array([[48, 2, 0], [2, 47, 1], [0, 2, 48]])
CHAMPION_VERSION = 3
DATA_HASH = "9f2c4e7a1b3d5f60" * 4
RUN = RunInfo("run-0042", "0123abcd4567", datetime(2026, 12, 2, 20, 31, tzinfo=UTC))
TRAINING = {"arch": "small_cnn", "epochs": 5, "lr": 0.05, "store_uri": "/secret/store"}
SIDE = 28  # the test images' side: the digits' size


def square_image(side: int = SIDE) -> np.ndarray:
    """``uint8 [1,side,side]``: black, with a white square over the middle third."""
    image = np.zeros((1, side, side), dtype=np.uint8)
    image[0, side // 3: 2 * side // 3 + 1, side // 3: 2 * side // 3 + 1] = 255
    return image


def sample_mistakes() -> MistakeSample:
    mistakes = MistakeSample()
    images = np.stack([square_image()] * 4)
    mistakes.add(images, np.array([0, 1, 2, 2]), np.array([1, 1, 1, 1]))  # the dog is right; three are wrong
    return mistakes


def sample_evaluation() -> Evaluation:
    challenger, champion = summarize(CHALLENGER, CLASSES), summarize(CHAMPION, CLASSES)
    verdict = gate(challenger.accuracy, 0.95, champion.accuracy, 0.005, CHAMPION_VERSION)
    return Evaluation(challenger, verdict, champion, CHAMPION_VERSION, threshold=0.95, tolerance=0.005,
                      data_hash=DATA_HASH, training=TRAINING, mistakes=sample_mistakes())


def sample_history(epochs: int = 5) -> list[dict]:
    """Accuracies between 0.95 and 0.99 (a flat line on a 0–1 axis), losses falling from 0.5."""
    return [{"epoch": i, "loss": 0.5 / i, "train_accuracy": 0.95 + 0.01 * (i - 1), "val_loss": 0.55 / i,
             "val_accuracy": 0.955 + 0.008 * (i - 1), "comm_fraction": 0.2, "seconds": 1.5} for i in range(1, epochs + 1)]
