"""Data tests: IDX and ImageFolder reading, validation errors, the deterministic split, preparation."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from components.data.decode import decode
from components.data.idx import MAX_IDX_BYTES, encode_idx, parse_idx, read_idx, write_idx_gz
from components.data.prepare import DATASET_FILE, PrepareConfig, stratified_split, write_order
from components.data.report import data_report
from components.data.sample import digits_as_mnist
from components.data.sources import open_source
from components.errors import DataError
from components.store import LocalStore
from tests.helpers import load_split, prepare_at


def load_raw(store):
    """Every example of a small raw data set, decoded at its native size: ``(images, labels, source)``."""
    source = open_source(store)
    geometry = source.geometry(0)
    images = np.stack([decode(source.fetch(i), geometry).pixels for i in range(len(source))])
    return images, source.labels, source


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
    images_read, labels_read, source = load_raw(LocalStore(tmp_path))
    assert images_read.shape == (30, 1, 28, 28)
    assert source.source_format == "mnist-idx"
    assert sorted(labels_read.tolist()) == sorted(labels.tolist())


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
    images, labels, source = load_raw(LocalStore(tmp_path))
    assert source.class_names == ["cat", "dog"]
    assert images.shape == (6, 1, 8, 8)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def two_classes(tmp_path, per_class=10, size=(8, 8)):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (tmp_path / cls / f"{i}.png").write_bytes(png(size, value=10 * i))


def test_an_odd_size_beyond_the_sampled_files_names_the_file_and_the_parameter(tmp_path):
    two_classes(tmp_path / "raw", per_class=40)
    (tmp_path / "raw" / "b" / "39.png").write_bytes(png((9, 8)))  # not among the 32 sampled headers
    with pytest.raises(DataError, match=r"b/39.png: expected 8x8 images like the others .* found 9x8: set image_size=S"):
        prepare_at(str(tmp_path / "raw"), str(tmp_path / "store"))
    assert not (tmp_path / "store" / "prepared").exists() or not any((tmp_path / "store" / "prepared").rglob("*.bin"))


def test_undecodable_image_is_named(tmp_path):
    two_classes(tmp_path / "raw")
    (tmp_path / "raw" / "a" / "2.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="a/2.png: expected a PNG, JPEG or WebP image, found 20 bytes that are none of them"):
        prepare_at(str(tmp_path / "raw"), str(tmp_path / "store"))


def test_an_image_above_the_pixel_limit_is_refused_from_its_header_naming_the_file(tmp_path):
    two_classes(tmp_path / "raw")
    # 12000x12000 one-bit PNG: a few KiB of file, 430 MB of RGB once decoded.
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 2**20
    (tmp_path / "raw" / "a" / "bomb.png").write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match=r"a/bomb.png: expected at most 50,000,000 pixels, found a 12000x12000 PNG"):
        prepare_at(str(tmp_path / "raw"), str(tmp_path / "store"), image_size=8)


def test_a_huge_file_is_refused_by_its_size_before_it_is_read(tmp_path):
    two_classes(tmp_path / "raw")
    with open(tmp_path / "raw" / "a" / "huge.png", "wb") as f:
        f.truncate(3 * 2**30)  # sparse: 3 GiB that take no disk and would take 3 GiB of memory to read
    with pytest.raises(DataError, match=r"a/huge.png: expected an image file of at most 256 MiB, found 3072 MiB"):
        prepare_at(str(tmp_path / "raw"), str(tmp_path / "store"))


def test_a_one_class_folder_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    for i in range(20):
        (tmp_path / "only" / f"{i}.png").write_bytes(png())
    with pytest.raises(DataError, match=r"expected at least 2 class folders .* found \['only'\]"):
        prepare_at(str(tmp_path), str(tmp_path / "store"))


def test_an_idx_file_that_inflates_past_its_header_is_refused_at_the_first_extra_byte(tmp_path):
    images, labels = tiny_digits(10)
    bomb = gzip.compress(encode_idx(images) + bytes(64 * 2**20), mtime=0)  # 64 MiB of zeros: ~64 KiB gzipped
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(write_idx_gz(labels))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: padded IDX data, shape \[10, 28, 28\] needs 7840 bytes, found more"):
        open_source(LocalStore(tmp_path))


def test_an_idx_header_declaring_more_than_the_cap_is_refused_before_inflating(tmp_path):
    header = bytes([0, 0, 8, 3]) + (MAX_IDX_BYTES // (28 * 28) + 1).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with pytest.raises(DataError, match=r"expected an IDX file of at most 16 GiB of data, found a header declaring"):
        parse_idx(header, "train-images-idx3-ubyte", 3)


def test_split_is_deterministic_disjoint_complete_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    a = stratified_split(labels, PrepareConfig(seed=3))
    b = stratified_split(labels, PrepareConfig(seed=3))
    c = stratified_split(labels, PrepareConfig(seed=4))
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["test"], c["test"])
    combined = np.concatenate(list(a.values()))
    assert sorted(combined.tolist()) == list(range(500))
    assert np.bincount(labels[a["test"]]).tolist() == [5] * 10


def test_prepare_writes_shards_an_index_and_a_report(sample_uri, tmp_path):
    info = prepare_at(sample_uri, str(tmp_path), shard_bytes=100_000)
    assert info.counts == {"train": 1439, "val": 179, "test": 179}
    assert sum(info.class_histogram["test"].values()) == 179
    assert len(info.content_hash) == 64
    shards = info.shard_list("train")
    assert len(shards) == 12 and sum(s.count for s in shards) == 1439
    images, labels = load_split(info, "train")
    assert images.shape == (1439, 1, 28, 28) and images.dtype == np.uint8
    # Shards hold a seeded random order of the split, so each one samples every class.
    assert len(set(labels[: shards[0].count].tolist())) == 10
    report = data_report(info)
    assert "| **all** | **1439** | **179** | **179** |" in report and "Exact duplicates across splits: none" in report
    assert (tmp_path / info.prefix / DATASET_FILE).is_file()


def test_the_write_order_is_seeded_and_complete():
    indices = np.arange(100)
    assert np.array_equal(write_order(indices, "train", 1), write_order(indices, "train", 1))
    assert not np.array_equal(write_order(indices, "train", 1), write_order(indices, "train", 2))
    assert sorted(write_order(indices, "val", 1).tolist()) == list(range(100))


def test_prepare_is_idempotent_and_keyed_by_split(sample_uri, tmp_path):
    first = prepare_at(sample_uri, str(tmp_path), seed=1)
    again = prepare_at(sample_uri, str(tmp_path), seed=1)
    other = prepare_at(sample_uri, str(tmp_path), seed=2)
    assert first == again
    assert other.prefix != first.prefix and other.content_hash == first.content_hash


def test_bad_data_writes_nothing_to_the_store(tmp_path):
    images, labels = tiny_digits(20)
    labels[3] = 99
    write_mnist(tmp_path / "raw", images, labels)
    with pytest.raises(DataError):
        prepare_at(str(tmp_path / "raw"), str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_sample_is_mnist_shaped_digits():
    images, labels = digits_as_mnist()
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert set(labels.tolist()) == set(range(10))
    assert images[:, :4, :].max() == 0  # the 20x20 digit sits in a blank 4-pixel frame, like MNIST
    assert gzip.decompress(write_idx_gz(images[:1]))[:4] == b"\x00\x00\x08\x03"


def test_duplicates_found_in_slices_match_a_brute_force_count(monkeypatch) -> None:
    """The duplicate search slices each later split (bounded memory); the count and the files it names must
    be those of comparing every pair, including hits on both sides of a slice boundary."""
    import hashlib

    from components.data import checks
    from components.data.decode import Chunk

    monkeypatch.setattr(checks, "SEARCH_SLICE", 7)
    rng = np.random.default_rng(3)
    content = rng.integers(0, 60, size=300)  # 60 distinct "pictures" over 300 images: many duplicates
    split_of = rng.choice(["train", "val", "test"], size=300, p=[0.6, 0.2, 0.2])
    tally = checks.Tally(["a", "b"], 1)
    for split in checks.SPLITS:
        indices = np.flatnonzero(split_of == split)
        digests = np.array([list(hashlib.sha256(bytes([int(content[i])])).digest()) for i in indices], np.uint8)
        tally.add(split, Chunk(indices, np.zeros(len(indices), np.int32), np.zeros((len(indices), 1, 1, 1), np.uint8),
                               np.ones((len(indices), 2), np.int64), digests.reshape(-1, 32), 0,
                               np.zeros((len(indices), 2, 1)), []))
    seen = {"train": set(content[split_of == "train"])}
    seen["val"] = seen["train"]
    seen["test"] = seen["train"] | set(content[split_of == "val"])
    expected = sum(1 for i in range(300) if split_of[i] != "train" and content[i] in seen[split_of[i]])
    found = tally.duplicates(lambda i: f"img-{i}")
    assert found["across_splits"] == expected > checks.DUPLICATES_LISTED
    for item in found["listed"]:
        later, earlier = int(item["file"][4:]), int(item["same_as"][4:])
        assert content[later] == content[earlier] and split_of[later] == item["split"]
        assert checks.SPLITS.index(split_of[earlier]) < checks.SPLITS.index(item["split"])


def test_decode_processes_do_not_import_the_parents_main_module(tmp_path) -> None:
    """A spawned child imports its parent's ``__main__`` first; in a KFP step that is kfp's executor (0.4 s and
    40 MB per process). The decode processes must start without it: the main module here marks its import."""
    import subprocess
    import sys

    marker, script = tmp_path / "imported", tmp_path / "main_script.py"
    script.write_text(
        "import sys\n"
        "if __name__ != '__main__':\n"
        f"    open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
        "from components.data.decode import PROCESS_MIN_EXAMPLES, Decoder\n"
        "if __name__ == '__main__':\n"
        "    with Decoder(PROCESS_MIN_EXAMPLES, 4) as decoder:\n"
        "        print(decoder.processes)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True)
    if int(done.stdout.split()[-1]) < 2:
        pytest.skip("this machine gives preparation fewer than 2 CPUs, so it decodes on threads")
    assert not marker.exists(), f"a decode process imported the main module as {marker.read_text().split()}"
