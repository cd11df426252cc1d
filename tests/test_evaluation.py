"""Evaluation tests: metrics from a confusion matrix, the gate, the report, and a real model on real data."""

from __future__ import annotations

import numpy as np
import pytest

from components.evaluation.evaluate import ACCEPTED, REJECTED, confusion_matrix, evaluate_model, gate, markdown_report, summarize
from tests.helpers import load_split


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_summary_precision_recall_and_accuracy():
    result = summarize(np.array([[8, 2], [1, 9]]), ["a", "b"])
    assert result.accuracy == pytest.approx(17 / 20)
    assert result.precision == {"a": pytest.approx(8 / 9), "b": pytest.approx(9 / 11)}
    assert result.recall == {"a": 0.8, "b": 0.9}


def test_a_class_never_predicted_gets_zero_precision_not_nan():
    result = summarize(np.array([[0, 3], [0, 5]]), ["a", "b"])
    assert result.precision["a"] == 0.0 and result.recall["a"] == 0.0


@pytest.mark.parametrize(
    ("candidate", "champion", "decision", "why"),
    [
        (0.97, None, ACCEPTED, "no production model yet"),
        (0.90, None, REJECTED, "below the threshold"),
        (0.97, 0.975, ACCEPTED, "production scored 0.9750"),
        (0.96, 0.98, REJECTED, "worse than production's 0.9800"),
    ],
)
def test_gate_needs_the_threshold_and_no_regression_beyond_tolerance(candidate, champion, decision, why):
    verdict = gate(candidate, threshold=0.95, champion=champion, tolerance=0.01)
    assert verdict.decision == decision and why in verdict.reason


def test_report_shows_candidate_and_champion_side_by_side():
    candidate = summarize(np.array([[5, 0], [1, 4]]), ["a", "b"])
    champion = summarize(np.array([[4, 1], [1, 4]]), ["a", "b"])
    report = markdown_report(candidate, gate(0.9, 0.5, 0.8), champion)
    assert "production precision" in report and "0.9000" in report and "0.8000" in report


def test_evaluating_a_version_on_the_test_split(version_folder, prepared):
    images, labels = load_split(prepared, "test")
    result = evaluate_model(version_folder, images, labels)
    assert result.count == 179 and 0.0 <= result.accuracy <= 1.0
    assert np.array(result.confusion).sum() == 179
