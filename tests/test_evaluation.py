"""Evaluation tests: metrics from a confusion matrix, the gate, the interval, the reports' content and
pictures, and a real model on real data."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from components.evaluation.evaluate import (
    ACCEPTED,
    REJECTED,
    MistakeSample,
    confusion_matrix,
    evaluate_model,
    evaluate_models,
    gate,
    summarize,
    wilson_interval,
)
from components.evaluation.pictures import COUNTS_UP_TO, THUMBNAIL_SIDE, confusion_svg, png_thumbnail
from components.evaluation.report import html_report, markdown_report
from tests.helpers import load_split
from tests.report_samples import RUN, sample_evaluation


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
        (0.97, 0.975, ACCEPTED, "production version 3 scored 0.9750"),
        (0.96, 0.98, REJECTED, "worse than production version 3's 0.9800"),
    ],
)
def test_gate_needs_the_threshold_and_no_regression_beyond_tolerance(candidate, champion, decision, why):
    verdict = gate(candidate, threshold=0.95, champion=champion, tolerance=0.01, champion_version=3 if champion else None)
    assert verdict.decision == decision and why in verdict.reason


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (1787, 1797, 0.9898, 0.9970)],
)
def test_the_wilson_interval_matches_worked_values_and_stays_inside_0_1(successes, trials, low, high):
    assert wilson_interval(successes, trials) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))


def test_no_test_images_give_the_interval_that_says_nothing():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert summarize(np.array([[8, 2], [1, 9]]), ["a", "b"]).interval == wilson_interval(17, 20)


def test_mistakes_keep_the_first_ones_in_test_order_and_count_them_all():
    mistakes = MistakeSample(limit=3)
    images = np.stack([np.full((1, 4, 4), k, dtype=np.uint8) for k in range(6)])
    mistakes.add(images, np.array([0, 1, 1, 0, 1, 0]), np.array([1, 1, 0, 0, 0, 1]))  # wrong at 0, 2, 4, 5
    mistakes.add(images[:2], np.array([0, 0]), np.array([1, 1]))
    assert mistakes.total == 6 and [(m.true, m.predicted) for m in mistakes.kept] == [(0, 1), (1, 0), (1, 0)]
    assert [Image.open(io.BytesIO(m.png)).getpixel((0, 0)) for m in mistakes.kept] == [0, 2, 4]


def test_a_large_test_image_is_kept_as_a_small_png_of_the_same_shape():
    png, width, height = png_thumbnail(np.zeros((3, 400, 800), dtype=np.uint8))
    picture = Image.open(io.BytesIO(png))
    assert (width, height) == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2) == picture.size and picture.mode == "RGB"
    assert png_thumbnail(np.zeros((1, 28, 28), dtype=np.uint8))[1:] == (28, 28)
    with pytest.raises(ValueError, match=r"expected a uint8 \[C,H,W\] image with C of 1, 3 or 4, got float32 \[2, 5, 5\]"):
        png_thumbnail(np.zeros((2, 5, 5), dtype=np.float32))


def test_the_confusion_picture_has_a_cell_per_pair_and_counts_only_while_they_fit():
    small = confusion_svg([[3, 1], [0, 4]], ["<a>", "b"])
    assert small.count("<rect") == 4 and "&lt;a&gt;" in small and "<a>" not in small
    assert "true &lt;a&gt;, predicted b: 1" in small and ">4</text>" in small
    n = COUNTS_UP_TO + 1
    large = confusion_svg((33 * np.eye(n, dtype=int)).tolist(), [f"c{k}" for k in range(n)])
    assert large.count("<rect") == n * n and ">33</text>" not in large and "predicted c0: 33" in large


def test_the_markdown_report_shows_verdict_champion_interval_and_provenance_as_text_only():
    report = markdown_report(sample_evaluation(), RUN)
    low, high = wilson_interval(147, 150)
    assert report.startswith("# Evaluation: **accepted**") and "production version 3 scored 0.9533" in report
    assert "|  | challenger (this run) | champion (production version 3) |" in report
    assert f"| 95% interval (Wilson) | {low:.4f} – {high:.4f} |" in report
    assert "| misclassified | 3 | 7 |" in report and "| bird | 0 | 2 | 48 |" in report
    assert "| run id | run-0042 |" in report and "| date | 2026-12-02 20:31 UTC |" in report
    assert "| code version | 0123abcd4567 |" in report and "`arch=small_cnn`" in report and "/secret/store" not in report
    assert "<" not in report, "the Kubeflow UI's Markdown viewer renders no raw HTML"


def test_the_reports_say_when_there_is_no_champion_or_it_was_not_compared():
    first = replace(sample_evaluation(), champion=None, champion_version=None, verdict=gate(0.98, 0.95))
    assert "No production model yet" in markdown_report(first, RUN) and "champion (" not in markdown_report(first, RUN)
    unlike = replace(sample_evaluation(), champion=None)
    assert "| accuracy | 0.9800 | not compared |" in markdown_report(unlike, RUN)
    assert "Production version 3 was not scored" in html_report(unlike, RUN)


def test_the_html_report_inlines_its_pictures_and_needs_nothing_else():
    page = html_report(sample_evaluation(), RUN)
    assert page.count('<svg') == 1 and page.count('src="data:image/png;base64,') == 3
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_evaluating_a_version_on_the_test_split(version_folder, prepared):
    images, labels = load_split(prepared, "test")
    result = evaluate_model(version_folder, images, labels)
    assert result.count == 179 and 0.0 <= result.accuracy <= 1.0
    assert np.array(result.confusion).sum() == 179


def test_the_candidates_mistakes_are_collected_in_the_same_pass(version_folder, prepared):
    images, labels = load_split(prepared, "test")
    mistakes = MistakeSample()
    (result,) = evaluate_models([version_folder], [(images[:100], labels[:100]), (images[100:], labels[100:])], mistakes)
    assert mistakes.total == result.count - result.correct > 0  # random weights: most answers are wrong
    assert len(mistakes.kept) == min(mistakes.total, mistakes.limit)
    first = mistakes.kept[0]
    assert Image.open(io.BytesIO(first.png)).size == (28, 28) and first.true != first.predicted
