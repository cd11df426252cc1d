"""The drift report: the reference push stores with a version, and collected records judged against it.

A real version is pushed from a real prepared data set (the bundled digits); the served records are written
in the collected format straight from images with :func:`image_stats`, as the predictor computes them: the
held-out images must read "no drift", the same images inverted, darkened or with a class gone "drift".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from components.errors import ModelFormatError
from components.modelfile import MANIFEST_FILE
from components.monitoring import stats
from components.monitoring.drift import (
    DRIFT,
    NO_DRIFT,
    NOT_ENOUGH,
    Thresholds,
    drift_report,
    load_reference,
    parse_time,
    psi,
)
from components.monitoring.reference import REFERENCE_FILE, Reference
from components.monitoring.report import html_report, markdown_report
from components.monitoring.stats import RECORD_FIELDS
from components.registry import Registry
from components.store import join_key, open_store
from pipelines.cli import main
from tests.conftest import make_version_folder
from tests.monitoring_data import MODEL, SINCE, START, UNTIL, records, serving_store, shifted, write_records


def test_push_stores_the_training_reference_in_the_version_and_hashes_it(pushed):
    store, info = pushed
    registry = Registry(store, MODEL)
    entry = registry.manifest(1)["files"][REFERENCE_FILE]
    registry.verify(1)  # every file, the reference included, matches its manifest
    reference = load_reference(registry, 1)
    assert reference.count == info.counts["train"] and reference.dataset_hash == info.content_hash
    train_labels = np.array([info.class_histogram["train"][name] for name in info.class_names])
    assert reference.label_fractions == pytest.approx(train_labels / train_labels.sum(), abs=1e-6)
    assert [s.name for s in reference.statistics] == ["mean[L]", "std[L]", "dark", "bright"]
    for s in reference.statistics:
        assert len(s.fractions) == len(s.edges) + 1 and sum(s.fractions) == pytest.approx(1, abs=1e-5)
    assert max(reference.binned("mean[L]").fractions) < 0.2  # deciles: no bin holds twice its share
    assert len(entry["sha256"]) == 64


def test_a_reference_changed_after_the_push_is_refused(pushed, tmp_path):
    store = open_store(str(tmp_path / "store"))
    registry = Registry(store, MODEL)
    Registry(pushed[0], MODEL).download(1, tmp_path / "v1")
    (tmp_path / "v1" / MANIFEST_FILE).unlink()
    registry.push(tmp_path / "v1", {"verdict": {"decision": "accepted", "reason": ""}})
    key = join_key(registry.version_prefix(1), REFERENCE_FILE)
    changed = json.loads(store.read_bytes(key)) | {"count": 1}
    store.write_bytes(key, json.dumps(changed).encode())
    with pytest.raises(ModelFormatError, match="monitoring.json of digits version 1 has SHA-256"):
        load_reference(registry, 1)


def test_held_out_images_read_no_drift_and_only_the_window_and_version_are_judged(pushed, held_out, store_uri, tmp_path):
    store = serving_store(pushed, store_uri, tmp_path)
    pixels, labels = held_out
    served = records(pixels, labels)
    assert set(served[0]) == set(RECORD_FIELDS)  # the collected format, field for field
    write_records(store, served)
    write_records(store, records(255 - pixels[:40], labels[:40], version=2), "canary")  # another version: not judged
    write_records(store, records(255 - pixels[:40], labels[:40], start=START), "early")  # before the window: not read
    store.write_bytes("collected/digits/date=2026-12-01/hour=11/torn.jsonl", b'{"time": "2026-12-01T11:00:00Z", "mea')
    report = drift_report(store, MODEL, SINCE, UNTIL)
    assert (report.verdict, report.version, report.records) == (NO_DRIFT, 1, len(pixels)), report.reason
    assert report.other_versions == {"2": 40} and report.skipped == 1 and report.drifted() == []
    assert max(s.psi for s in report.statistics) < 0.1 and report.classes.total_variation < 0.1
    assert report.confidence["p50"] == pytest.approx(0.9, abs=0.001)
    assert sum(report.volume.values()) == len(pixels) + 40
    assert markdown_report(report).startswith("# Drift: **no drift**")


@pytest.mark.parametrize(("how", "moved"), [("inverted", {"mean[L]", "dark", "bright", "intensity"}),
                                            ("darkened", {"mean[L]", "std[L]", "bright"}),
                                            ("class 3 gone", {"predicted class"})])
def test_shifted_images_read_drift_naming_what_moved(pushed, held_out, tmp_path, how, moved):
    store = serving_store(pushed, str(tmp_path / "store"), tmp_path)
    pixels, labels = shifted(*held_out, how)
    write_records(store, records(pixels, labels))
    report = drift_report(store, MODEL, SINCE, UNTIL)
    assert report.verdict == DRIFT and moved <= set(report.drifted()), report.reason
    if how == "class 3 gone":
        assert report.drifted() == ["predicted class"]  # the inputs did not move
    else:
        assert "predicted class" not in report.drifted()
    page, summary = html_report(report), markdown_report(report)
    assert page.index("Drift: <b>drift</b>") < page.index("<svg") and "digits version 1 (production)" in page
    assert "<script" not in page and "src=" not in page  # self-contained: nothing to fetch, nothing to run
    assert page.count("<svg") == len(report.statistics) + 2  # one chart per statistic, the classes, the volume
    assert all(name in summary.split("\n")[4] for name in moved)  # the "Moved: …" line under the verdict


def test_too_few_records_read_not_enough_data(pushed, held_out, tmp_path):
    store = serving_store(pushed, str(tmp_path / "store"), tmp_path)
    write_records(store, records(*[a[:20] for a in held_out]))
    report = drift_report(store, MODEL, SINCE, UNTIL, Thresholds(min_records=100))
    assert report.verdict == NOT_ENOUGH and report.drifted() == []
    assert report.reason.startswith("20 records of version 1 in the window, fewer than the 100 needed")
    assert "| mean[L] |" in markdown_report(report) and "moved" not in markdown_report(report)  # scores shown, none judged


def test_monitor_cli_writes_the_reports_and_names_the_promotion_in_the_window(pushed, held_out, tmp_path, capsys):
    store, _ = pushed
    pixels, labels = held_out
    start = datetime.now(UTC) - timedelta(minutes=30)
    collected = open_store(str(tmp_path / "collected"))  # as on AKS: the records in a container of their own
    write_records(collected, records(pixels, labels, start=start, step=timedelta(seconds=1)))
    out = tmp_path / "report"
    main(["monitor", "--store", store.uri, "--collected", collected.uri, "--model", MODEL, "--since", "2h", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "digits version 1 (production)" in printed and ": NO DRIFT (" in printed and "\nmean[L] " in printed
    assert sorted(p.name for p in out.iterdir()) == ["drift.json", "metrics.json", "report.html", "report.md"]
    assert json.loads((out / "metrics.json").read_text())["records"] == len(pixels)
    assert "promote from version None to version 1 by test" in (out / "report.md").read_text()


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "nosuch"], "error: expected model 'nosuch' in the registry"),
    (["--model", MODEL, "--since", "yesterday"], "error: expected --since as an ISO 8601 time"),
])
def test_monitor_cli_refuses_bad_input_in_one_line(pushed, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exited:
        main(["monitor", "--store", pushed[0].uri, "--out", str(tmp_path), *argv])
    assert str(exited.value.code).startswith(message) and "\n" not in str(exited.value.code)


def test_monitor_cli_refuses_a_model_with_nothing_in_production(tmp_path):
    Registry(open_store(str(tmp_path / "store")), "other").push(make_version_folder(tmp_path / "v"), {})
    with pytest.raises(SystemExit, match="error: model 'other' has no production version"):
        main(["monitor", "--store", str(tmp_path / "store"), "--model", "other", "--out", str(tmp_path / "out")])


def test_psi_and_times():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * np.log(1.8) - 0.4 * np.log(0.2), abs=1e-6)
    assert psi([1.0, 0.0], [0.0, 1.0]) < 20  # an empty bin counts as epsilon, not as infinity
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    assert parse_time("24h", now) == now - timedelta(hours=24) and parse_time("2026-12-01T10:00", now) == START
    assert parse_time("2026-12-01T11:00+01:00", now) == START


def test_reference_json_round_trips(pushed):
    reference = load_reference(Registry(pushed[0], MODEL), 1)
    assert Reference.from_json(reference.to_json().encode(), "x") == reference


def test_the_component_logs_the_metrics_writes_both_pages_and_returns_the_verdict(pushed, held_out, tmp_path):
    from kfp import dsl

    from components.monitoring.component import drift_report as component

    store = serving_store(pushed, str(tmp_path / "store"), tmp_path)
    write_records(store, records(*held_out))
    metrics, page, summary = (dsl.Metrics(uri=str(tmp_path / "metrics")), dsl.HTML(uri=str(tmp_path / "report.html")),
                              dsl.Markdown(uri=str(tmp_path / "report.md")))
    verdict = component.python_func(store_uri=store.uri, collect_uri="", model_name=MODEL, since=SINCE.isoformat(), until=UNTIL.isoformat(),
                                    psi_threshold=0.2, class_psi_threshold=0.2, min_records=100, metrics=metrics,
                                    report=summary, report_html=page)
    assert verdict == NO_DRIFT and metrics.metadata["records"] == len(held_out[0]) and metrics.metadata["drift"] == 0
    assert "psi_mean_L" in metrics.metadata and "psi_intensity" in metrics.metadata
    assert Path(summary.path).read_text().startswith("# Drift: **no drift**") and "<svg" in Path(page.path).read_text()


@pytest.mark.parametrize("shape", [(70, 1, 28, 28), (3, 3, 40, 30), (1, 1, 2, 2)])
def test_image_stats_in_float32_chunks_match_a_float64_computation(shape, monkeypatch):
    """image_stats works in float32 and in chunks under glibc's mmap threshold: its means and stds match a plain
    float64 computation far below the six decimals recorded, and its histograms exactly, chunked or not."""
    pixels = np.random.default_rng(4).integers(0, 256, shape).astype(np.uint8)
    flat = pixels.reshape(shape[0], shape[1], -1).astype(np.float64) / 255.0
    bins = np.minimum((flat.reshape(shape[0], -1) * stats.HIST_BINS).astype(np.int64), stats.HIST_BINS - 1)
    hist = np.stack([np.bincount(row, minlength=stats.HIST_BINS) for row in bins]) / bins.shape[1]
    whole = stats.image_stats(pixels)
    monkeypatch.setattr(stats, "STATS_CHUNK_BYTES", 4 * 28 * 28 * 8)  # the 70 images in chunks of at most 8
    chunked = stats.image_stats(pixels)
    for result in (whole, chunked):
        np.testing.assert_allclose(result.mean, flat.mean(axis=2), rtol=0, atol=1e-7)
        np.testing.assert_allclose(result.std, flat.std(axis=2), rtol=0, atol=1e-7)
        np.testing.assert_array_equal(result.hist, hist)
    assert chunked.mean.shape == (shape[0], shape[1]) and chunked.hist.shape == (shape[0], stats.HIST_BINS)
