"""Raw and prepared data through either store backend (a local folder and Azurite): real photo folders of
mixed sizes and modes, the unreadable-file policy, the duplicate check, and the streamed training input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.data.prepare import DATASET_FILE, PrepareConfig, prepare
from components.data.sample import digits_as_mnist, write_sample
from components.errors import DataError
from components.imagefile import decode_fit
from components.store import Store, join_key, open_store
from components.training.config import TrainConfig
from components.training.input import train_batches
from tests.helpers import load_split

MODES = ("RGB", "RGBA", "P", "L", "I;16")


def photo(rng: np.random.Generator, cls: int, mode: str) -> tuple[bytes, str]:
    """A photo-like image of a random size whose dominant colour says its class; PNG or JPEG by mode."""
    width, height = (int(v) for v in rng.integers(20, 140, 2))
    pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    pixels[:, :, cls] += 180
    image = Image.fromarray(pixels, mode="RGB")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    fmt = "JPEG" if mode in ("RGB", "L") else "PNG"
    image.save(buffer, format=fmt)
    return buffer.getvalue(), fmt.lower().replace("jpeg", "jpg")


def put_files(store: Store, files: dict[str, bytes]) -> None:
    """Raw files into a store the way ``data put`` puts them (Blob blobs then carry their SHA-256)."""
    for key, data in files.items():
        store.write_bytes(key, data)


def photo_folder(per_class: int = 20, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    files = {}
    for cls, name in enumerate(("red", "green leaf", "blåbær")):  # a space and non-ASCII letters in class names
        for i in range(per_class):
            data, ext = photo(rng, cls, MODES[i % len(MODES)])
            files[f"{name}/{i:03d}.{ext}"] = data
    return files


def test_sample_data_is_written_prepared_and_read_back_through_the_store(store_uri: str) -> None:
    raw_uri = write_sample(store_uri.rstrip("/") + "/raw/digits")
    assert sorted(open_store(raw_uri).list()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
    ]
    info = prepare(open_store(raw_uri), open_store(store_uri), PrepareConfig(seed=3, shard_bytes=200_000))
    images, labels = digits_as_mnist()
    assert sum(info.counts.values()) == len(labels)
    assert len(info.shard_list("train")) > 1
    read = {s: load_split(info, s) for s in ("train", "val", "test")}
    assert sorted(np.concatenate([read[s][1] for s in read]).tolist()) == sorted(labels.tolist())
    assert read["train"][0].shape[1:] == (1, 28, 28) and read["train"][0].dtype == np.uint8


def test_a_mixed_size_photo_folder_of_every_mode_prepares_to_one_size(store_uri: str) -> None:
    raw, store = open_store(store_uri.rstrip("/") + "/raw"), open_store(store_uri)
    files = photo_folder()
    put_files(raw, files)
    info = prepare(raw, store, PrepareConfig(image_size=24, shard_bytes=20_000))
    assert info.image_shape == [3, 24, 24] and info.resized
    assert info.class_names == ["blåbær", "green leaf", "red"]
    assert sum(info.counts.values()) == 60 and len(info.shard_list("train")) > 1
    assert sum(info.size_histogram.values()) == 60
    # Each prepared image is exactly what the shared decoder makes of its file (the predictor uses the same one).
    expected = {decode_fit(data, 3, 24, 24)[0].tobytes() for data in files.values()}
    images, _ = load_split(info, "test")
    assert all(image.tobytes() in expected for image in images)


def test_native_size_is_kept_for_uniform_data_and_mixed_sizes_ask_for_image_size(store_uri: str) -> None:
    raw = open_store(store_uri.rstrip("/") + "/raw")
    put_files(raw, photo_folder(per_class=10))
    with pytest.raises(DataError, match=r"expected images of one size when image_size is 0 .* set image_size=S"):
        prepare(raw, open_store(store_uri), PrepareConfig())
    assert open_store(store_uri).list("prepared") == []


def test_an_unreadable_file_fails_by_default_and_is_skipped_and_listed_within_the_limit(store_uri: str) -> None:
    raw, store = open_store(store_uri.rstrip("/") + "/raw"), open_store(store_uri)
    files = photo_folder(per_class=10)
    files["red/truncated.png"] = files["red/001.png"][:100]
    files["red/empty.jpg"] = b""
    put_files(raw, files)
    with pytest.raises(DataError, match=r"red/\S+: expected .* \(set max_unreadable=N"):
        prepare(raw, store, PrepareConfig(image_size=16))
    assert store.list("prepared") == []  # nothing half-written
    with pytest.raises(DataError, match="more than max_unreadable=1"):
        prepare(raw, store, PrepareConfig(image_size=16, max_unreadable=1))
    info = prepare(raw, store, PrepareConfig(image_size=16, max_unreadable=2))
    assert sorted(u["file"] for u in info.unreadable) == ["red/empty.jpg", "red/truncated.png"]
    assert sum(info.counts.values()) == 30
    assert "red/truncated.png" in store.read_bytes(join_key(info.prefix, DATASET_FILE)).decode()


def test_decoding_on_worker_processes_prepares_exactly_what_the_reading_threads_do(store_uri: str, monkeypatch) -> None:
    """Large data sets are decoded on spawned processes (components.data.decode); forced here for a small one."""
    from components.data import decode

    raw = open_store(store_uri.rstrip("/") + "/raw")
    files = photo_folder(per_class=10)
    files["red/truncated.png"] = files["red/001.png"][:100]
    put_files(raw, files)
    on_threads = prepare(raw, open_store(store_uri.rstrip("/") + "/threads"), PrepareConfig(image_size=16, max_unreadable=1))
    monkeypatch.setattr(decode, "PROCESS_MIN_EXAMPLES", 0)
    monkeypatch.setattr(decode, "cpu_limit", lambda: 2)
    on_processes = prepare(raw, open_store(store_uri.rstrip("/") + "/processes"), PrepareConfig(image_size=16, max_unreadable=1))
    assert on_processes.content_hash == on_threads.content_hash
    assert (on_processes.mean, on_processes.std) == (on_threads.mean, on_threads.std)
    assert on_processes.shards == on_threads.shards  # the same bytes in the same order: the same SHA-256s
    assert on_processes.unreadable == on_threads.unreadable == [{"file": "red/truncated.png", "reason": on_threads.unreadable[0]["reason"]}]
    # A data set's problem (not one file's) raised in a worker process still fails the step, naming the file.
    uniform = open_store(store_uri.rstrip("/") + "/raw-uniform")
    put_files(uniform, {f"{c}/{i}.png": png_bytes((8, 8), 10 * i) for c in "ab" for i in range(40)} | {"b/39.png": png_bytes((9, 8), 0)})
    with pytest.raises(DataError, match=r"b/39.png: expected 8x8 images like the others .* found 9x8: set image_size=S"):
        prepare(uniform, open_store(store_uri.rstrip("/") + "/native"), PrepareConfig())


def png_bytes(size: tuple[int, int], value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def test_exact_duplicates_across_splits_are_reported_by_file(store_uri: str) -> None:
    raw, store = open_store(store_uri.rstrip("/") + "/raw"), open_store(store_uri)
    files = photo_folder(per_class=10)
    for name in ("red", "green leaf", "blåbær"):  # every image twice: most copies land in another split
        files.update({key.replace(".", "-copy."): data for key, data in files.items() if key.startswith(name + "/")})
    put_files(raw, files)
    info = prepare(raw, store, PrepareConfig(image_size=16))
    assert info.duplicates["across_splits"] >= 1
    listed = info.duplicates["listed"][0]
    assert files[listed["file"]] == files[listed["same_as"]]


def test_the_same_data_prepared_the_same_way_is_reused_without_reading_it(store_uri: str) -> None:
    raw, store = open_store(store_uri.rstrip("/") + "/raw"), open_store(store_uri)
    put_files(raw, photo_folder(per_class=10))
    first = prepare(raw, store, PrepareConfig(image_size=16))
    shard_key = join_key(first.prefix, first.shard_list("train")[0].key)
    store.write_bytes(shard_key, b"changed")  # a second preparation that read anything would rewrite it
    assert prepare(raw, store, PrepareConfig(image_size=16)) == first
    assert store.read_bytes(shard_key) == b"changed"
    other = prepare(raw, store, PrepareConfig(image_size=20))
    assert other.prefix != first.prefix


def test_a_preparation_killed_before_its_index_is_cleared_and_redone(store_uri: str) -> None:
    raw, store = open_store(store_uri.rstrip("/") + "/raw"), open_store(store_uri)
    put_files(raw, photo_folder(per_class=10))
    done = prepare(raw, store, PrepareConfig(image_size=16, shard_bytes=5_000))
    store.delete(join_key(done.prefix, DATASET_FILE))  # what a kill between the last shard and the index leaves
    store.write_bytes(join_key(done.prefix, "train/shard-09999.bin"), b"leftover")
    again = prepare(raw, store, PrepareConfig(image_size=16, shard_bytes=5_000))
    assert again == done
    assert join_key(done.prefix, "train/shard-09999.bin") not in store.list(done.prefix)


def test_a_worker_resumed_mid_epoch_streams_exactly_the_batches_of_an_uninterrupted_run(store_uri: str, tmp_path: Path) -> None:
    raw, store = open_store(store_uri.rstrip("/") + "/raw"), open_store(store_uri)
    put_files(raw, photo_folder(per_class=20))
    info = prepare(raw, store, PrepareConfig(image_size=16, shard_bytes=3_000))
    cfg = TrainConfig(store_uri=store.uri, dataset_prefix=info.prefix, output_prefix="runs/x/model", epochs=2,
                      batch_size=4, num_workers=2, shuffle_window=8)
    runs = {w: list(train_batches(store, info, cfg, w)) for w in (0, 1)}
    steps = info.counts["train"] // 8
    assert len(runs[0]) == len(runs[1]) == 2 * steps
    assert runs[0][0][0].shape == (4, 3, 16, 16) and runs[0][0][0].dtype == torch.uint8
    resumed = list(train_batches(store, info, cfg, 1, start_step=steps + 1))  # from the middle of epoch 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(runs[1][steps + 1 :], resumed, strict=True))
