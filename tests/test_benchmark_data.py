"""Smoke tests of ``benchmarks/data_throughput.py``'s helpers at tiny sizes: the generated folders, and
one measuring child of each kind. No timing is checked: the numbers belong to the benchmark's table."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.data_throughput import CLASSES, DIGITS, PHOTOS, Kind, class_name, generate, measure_local, run_child


def generated(folder: Path, kind: Kind, count: int) -> dict[str, list[Path]]:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        generate(folder, kind, count, pool)
    return {d.name: sorted(d.iterdir()) for d in sorted(folder.iterdir())}


def test_photos_are_mixed_size_rgb_jpegs_in_ten_classes_that_differ(tmp_path: Path) -> None:
    classes = generated(tmp_path, PHOTOS, 60)
    assert sorted(classes) == sorted(class_name(PHOTOS, c) for c in range(CLASSES))
    assert all(len(files) == 6 for files in classes.values())
    sizes, means = set(), []
    for files in classes.values():
        images = [Image.open(f) for f in files]
        assert {(i.format, i.mode) for i in images} == {("JPEG", "RGB")}
        sizes |= {i.size for i in images}
        assert all(48 <= side <= 160 for i in images for side in i.size)
        means.append(np.mean([np.asarray(i, dtype=np.float64).mean(axis=(0, 1)) for i in images], axis=0))
    assert len(sizes) > 30  # mixed sizes and aspects
    gaps = [np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1 :]]
    assert min(gaps) > 10  # every class has its own colour


def test_digits_are_28x28_grayscale_pngs(tmp_path: Path) -> None:
    classes = generated(tmp_path, DIGITS, 30)
    assert sorted(classes) == [str(d) for d in range(10)]
    for files in classes.values():
        assert {(Image.open(f).format, Image.open(f).mode, Image.open(f).size) for f in files} == {("PNG", "L", (28, 28))}


@pytest.mark.slow
def test_local_measurements_report_every_image_and_a_peak_rss(tmp_path: Path) -> None:
    generated(tmp_path / "raw-digits-200", DIGITS, 200)
    runs = measure_local(DIGITS, tmp_path / "raw-digits-200", tmp_path)
    assert runs["prepare"].images == runs["eval"].images == 200
    assert runs["prepare"].extra["shape"] == [1, 28, 28]
    assert runs["input"].extra["batch_shape"] == [64, 1, 28, 28]
    assert runs["input"].images == 64 * (160 // 64 - 1)  # the training split, the first batch not counted
    assert runs["input"].children_rss_mib > 0  # the loader processes were found alive
    assert all(run.rss_mib > 0 and run.seconds > 0 for run in runs.values())
    assert run_child("imports").rss_mib > 0
