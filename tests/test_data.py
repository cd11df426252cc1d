"""Data tests: IDX and ImageFolder reading, validation errors, the deterministic split, preparation."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from components.data.idx import encode_idx, parse_idx, read_idx, write_idx_gz
from components.data.prepare import SplitConfig, load_prepared, prepare, stratified_split
from components.data.sample import digits_as_mnist
from components.data.sources import load_raw
from components.errors import DataError
from components.store import LocalStore


def write_mnist(folder, images, labels, prefix="train", gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    encode = write_idx_gz if gz else encode_idx
    suffix = ".gz" if gz else ""
    (folder / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(encode(images))
    (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(encode(labels))


def tiny_digits(n=40, size=28):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def test_idx_round_trip_gzipped_and_plain():
    images, _ = tiny_digits(5)
    assert np.array_equal(read_idx(write_idx_gz(images), "x.gz", 3), images)
    assert np.array_equal(read_idx(encode_idx(images), "x", 3), images)


def test_truncated_idx_names_the_file_and_the_byte_counts():
    data = encode_idx(tiny_digits(5)[0])[:-10]
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated .* needs 3920 bytes, found 3910"):
        parse_idx(data, "train-images-idx3-ubyte", 3)


def test_idx_with_wrong_magic_is_rejected():
    with pytest.raises(DataError, match="expected IDX magic"):
        parse_idx(b"\x89PNG" + b"\0" * 20, "f", 3)


def test_corrupt_gzip_is_rejected_with_its_name():
    with pytest.raises(DataError, match="t.gz: not a valid gzip file"):
        read_idx(b"not gzip at all", "t.gz", 1)


def test_mnist_folder_loads_all_pairs(tmp_path):
    images, labels = tiny_digits(30)
    write_mnist(tmp_path, images[:20], labels[:20], "train")
    write_mnist(tmp_path, images[20:], labels[20:], "t10k", gz=False)
    raw = load_raw(LocalStore(tmp_path))
    assert raw.images.shape == (30, 1, 28, 28)
    assert raw.source_format == "mnist-idx"
    assert sorted(raw.labels.tolist()) == sorted(labels.tolist())


def test_labels_outside_the_class_range_name_the_file_and_index(tmp_path):
    images, labels = tiny_digits(12)
    labels[7] = 12
    write_mnist(tmp_path, images, labels)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: label 12 at index 7 is outside the class range 0–9"):
        load_raw(LocalStore(tmp_path))


def test_mnist_files_of_mixed_image_sizes_are_rejected(tmp_path):
    images, labels = tiny_digits(10)
    write_mnist(tmp_path, images, labels, "train")
    write_mnist(tmp_path, tiny_digits(10, size=32)[0], labels, "t10k")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: expected 32x32 images like t10k-images-idx3-ubyte.gz, found 28x28"):
        load_raw(LocalStore(tmp_path))


def test_images_without_labels_file_are_rejected(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(write_idx_gz(tiny_digits(3)[0]))
    with pytest.raises(DataError, match="has no labels file"):
        load_raw(LocalStore(tmp_path))


def test_missing_or_empty_folder_says_what_was_expected(tmp_path):
    with pytest.raises(DataError, match="no files in .*expected MNIST IDX files or an ImageFolder tree"):
        load_raw(LocalStore(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"expected MNIST IDX files .* found \['notes.txt'\]"):
        load_raw(LocalStore(tmp_path))


def png(size=(8, 8), mode="L", value=128) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_folder_classes_are_sorted_folder_names(tmp_path):
    for cls in ("dog", "cat"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(png(value=40 * i))
    raw = load_raw(LocalStore(tmp_path))
    assert raw.class_names == ["cat", "dog"]
    assert raw.images.shape == (6, 1, 8, 8)
    assert raw.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_with_mixed_sizes_names_the_odd_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(png((8, 8)))
    (tmp_path / "a" / "2.png").write_bytes(png((9, 8)))
    with pytest.raises(DataError, match=r"a/2.png: expected 8x8 images like a/1.png, found 9x8"):
        load_raw(LocalStore(tmp_path))


def test_undecodable_image_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(png())
    (tmp_path / "a" / "2.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="a/2.png: expected a PNG or JPEG image"):
        load_raw(LocalStore(tmp_path))


def test_split_is_deterministic_disjoint_complete_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    a = stratified_split(labels, SplitConfig(seed=3))
    b = stratified_split(labels, SplitConfig(seed=3))
    c = stratified_split(labels, SplitConfig(seed=4))
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["test"], c["test"])
    combined = np.concatenate(list(a.values()))
    assert sorted(combined.tolist()) == list(range(500))
    assert np.bincount(labels[a["test"]]).tolist() == [5] * 10


def test_prepare_writes_splits_and_metadata(sample_uri, tmp_path):
    info = prepare(sample_uri, str(tmp_path), SplitConfig())
    assert info.counts == {"train": 1439, "val": 179, "test": 179}
    assert sum(info.class_histogram["test"].values()) == 179
    assert len(info.content_hash) == 64
    data = load_prepared(str(tmp_path), info.prefix)
    assert data.images["train"].shape == (1439, 1, 28, 28)
    assert data.images["train"].dtype == np.uint8


def test_prepare_is_idempotent_and_keyed_by_split(sample_uri, tmp_path):
    first = prepare(sample_uri, str(tmp_path), SplitConfig(seed=1))
    again = prepare(sample_uri, str(tmp_path), SplitConfig(seed=1))
    other = prepare(sample_uri, str(tmp_path), SplitConfig(seed=2))
    assert first == again
    assert other.prefix != first.prefix and other.content_hash == first.content_hash


def test_bad_data_writes_nothing_to_the_store(tmp_path):
    images, labels = tiny_digits(20)
    labels[3] = 99
    write_mnist(tmp_path / "raw", images, labels)
    with pytest.raises(DataError):
        prepare(str(tmp_path / "raw"), str(tmp_path / "store"), SplitConfig())
    assert not (tmp_path / "store").exists()


def test_sample_is_mnist_shaped_digits():
    images, labels = digits_as_mnist()
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert set(labels.tolist()) == set(range(10))
    assert images[:, :4, :].max() == 0  # the 20x20 digit sits in a blank 4-pixel frame, like MNIST
    assert gzip.decompress(write_idx_gz(images[:1]))[:4] == b"\x00\x00\x08\x03"
